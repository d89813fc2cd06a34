"""The state record under --root, stdlib only: what every verb reads, writes and locks.

Owns the names of a state directory's files (:data:`STATE`, :data:`MONITOR_SOCK`, ...), the
one record type, :class:`State` (state.json, schema-versioned, read by :func:`load` and
written by :func:`save`: temp file, fsync, rename), the one per-id lock (:class:`Lock`:
flock on the state directory), valid ids, removing a state directory, and whether a pid
is alive and still the process recorded (its start time). :mod:`hyperpy.sandbox.store`
adds the directory's making and listing. Every verb, the hot ones included, works on
these, so ``hyperpy state`` imports neither dataclasses, typing nor logging.
"""

from __future__ import annotations

import json
import os
import time

from hyperpy.errors import ContainerNotFound, HyperpyError, UsageError

STATE = "state.json"
EXIT = "exit.json"
MONITOR_SOCK = "monitor.sock"  # the sandbox monitor's socket (a link to it in a pod member)
SHARE = "share.json"  # hyperpy/share.py's record of the 9p exports
SCHEMA_VERSION = 1
_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_ID_CHARS = _ALNUM | frozenset("_.+-")


def valid_id(cid: object) -> bool:
    """1-128 of letters, digits, ``_ . + -``, starting with a letter or digit."""
    return (
        isinstance(cid, str)
        and 0 < len(cid) <= 128
        and cid[0] in _ALNUM
        and all(c in _ID_CHARS for c in cid)
    )


def check_id(cid: str) -> None:
    if not valid_id(cid):
        raise UsageError(
            f"invalid container id {cid!r}: use 1-128 characters of letters, digits, "
            "'_', '.', '+' and '-', starting with a letter or digit"
        )


def state_dir(root: str, cid: str) -> str:
    check_id(cid)
    return os.path.join(root, cid)


def not_found(root: str, cid: str) -> ContainerNotFound:
    return ContainerNotFound(f"container {cid!r} does not exist (under {root})")


def read(root: str, cid: str) -> dict:
    """state.json of ``cid`` as stored."""
    path = os.path.join(state_dir(root, cid), STATE)
    try:
        with open(path) as f:
            raw = json.load(f)
    except (FileNotFoundError, NotADirectoryError):
        raise not_found(root, cid) from None
    except ValueError as exc:
        raise ContainerNotFound(f"container {cid!r}: state file {path} is corrupt: {exc}") from exc
    if not isinstance(raw, dict):
        raise ContainerNotFound(f"container {cid!r}: state file {path} is corrupt: not an object")
    return raw


class State:
    """A container's state.json, typed: what create records and every verb reads."""

    __slots__ = (
        "id", "bundle", "rootfs", "created", "status", "pid", "monitor_pid", "qemu_pid",
        "pid_start", "monitor_start", "qemu_start", "owner", "annotations", "init_proc",
        "terminal", "cgroups_path", "host_cgroup", "hooks", "sandbox", "driver", "schema",
    )  # fmt: skip

    def __init__(
        self,
        id: str,  # noqa: A002 - state.json's own name
        bundle: str,
        rootfs: str,
        created: str,
        status: str = "creating",
        pid: int = 0,
        monitor_pid: int = 0,
        qemu_pid: int = 0,
        # each pid's start time (start_time), taken when it is first saved: a pid that
        # another process took after ours died is then "already gone", never signalled
        pid_start: int = 0,
        monitor_start: int = 0,
        qemu_start: int = 0,
        owner: str = "",
        annotations: dict[str, str] | None = None,
        init_proc: int = 0,
        terminal: bool = False,
        cgroups_path: str = "",
        host_cgroup: str = "",  # below each hierarchy's root; empty: not placed
        hooks: dict | None = None,  # config.json's hooks, for start and delete
        sandbox: str = "",  # the id whose VM this container joined; empty: it owns its VM
        driver: str = "qemu",  # [vm] driver the VM was started with (delete cleans up after it)
        schema: int = SCHEMA_VERSION,
    ) -> None:
        self.id, self.bundle, self.rootfs, self.created = id, bundle, rootfs, created
        self.status, self.pid, self.monitor_pid, self.qemu_pid = status, pid, monitor_pid, qemu_pid
        self.pid_start, self.monitor_start, self.qemu_start = pid_start, monitor_start, qemu_start
        self.owner, self.annotations = owner, {} if annotations is None else annotations
        self.init_proc, self.terminal, self.cgroups_path = init_proc, terminal, cgroups_path
        self.host_cgroup, self.hooks = host_cgroup, {} if hooks is None else hooks
        self.sandbox, self.driver, self.schema = sandbox, driver, schema

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}

    @property
    def monitor(self) -> tuple[int, int]:
        """The monitor's pid and start time."""
        return self.monitor_pid, self.monitor_start


PID_STARTS = (("pid", "pid_start"), ("monitor_pid", "monitor_start"), ("qemu_pid", "qemu_start"))


def load(root: str, cid: str) -> State:
    """state.json of ``cid`` (a key this version does not know is left out)."""
    raw = read(root, cid)
    return State(**{k: v for k, v in raw.items() if k in State.__slots__})


def save(root: str, st: State) -> None:
    """Write state.json, first taking the start time of each pid not yet saved with one."""
    for pid_field, start_field in PID_STARTS:
        pid = getattr(st, pid_field)
        if pid and not getattr(st, start_field):
            setattr(st, start_field, start_time(pid))
    write_json_atomic(os.path.join(state_dir(root, st.id), STATE), st.as_dict())


class Lock:
    """``with Lock(root, cid) as d``: flock on the state directory ``d`` for a change."""

    def __init__(self, root: str, cid: str) -> None:
        self.root, self.cid = root, cid
        self.fd = -1

    def __enter__(self) -> str:
        import fcntl

        path = state_dir(self.root, self.cid)
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise not_found(self.root, self.cid) from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            if not os.path.exists(os.path.join(path, STATE)) and not os.path.isdir(path):
                raise not_found(self.root, self.cid)
        except BaseException:
            os.close(self.fd)
            raise
        return path

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def remove(root: str, cid: str) -> None:
    """Remove the state dir; refused while anything is mounted below it (a recursive
    removal would go on into the mounted rootfs or volume and delete the user's files)."""
    path = state_dir(root, cid)
    if not os.path.lexists(path):
        return
    if left := mounts_below(path):
        raise HyperpyError(
            f"cannot remove {path}: still mounted below it: {', '.join(left)}; unmount "
            "them (umount -l) and run delete again"
        )
    aside = os.path.join(root, f".deleting-{cid}-{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    import shutil

    shutil.rmtree(aside, ignore_errors=True)


def mounts_below(path: str) -> list[str]:
    """Mount points at or below ``path`` (from the kernel's mount table), deepest first."""
    path = os.path.realpath(path)
    found = set()
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            for line in f:
                text = os.fsdecode(_unescape(line.split()[4]))
                if text == path or text.startswith(path + "/"):
                    found.add(text)
    except OSError:
        return []
    return sorted(found, key=lambda p: (-p.count("/"), p))


def _unescape(raw: bytes) -> bytes:
    """mountinfo's octal escapes (``\\040`` for a space) back to bytes."""
    if b"\\" not in raw:
        return raw
    import re

    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), raw)


def write_json_atomic(path: str, obj: object) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


def proc_state(pid: int) -> str:
    """The state letter of /proc/PID/stat (R, S, T, Z, ...); empty if there is none."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def cmdline_names(pid: int, path: str) -> bool:
    """Whether process ``pid``'s command line contains ``path``."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return path.encode() in f.read()
    except OSError:
        return False


def start_time(pid: int) -> int:
    """When process ``pid`` started (clock ticks since boot, /proc/PID/stat field 22), or 0
    when there is none: with the pid, what identifies a process (a pid is reused)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
        return int(text[text.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


def same_process(pid: int, start: int) -> bool:
    """Whether ``pid`` is still the process that started at ``start`` (0: not recorded,
    as in a record older than this field: then only the pid is known)."""
    return start == 0 or start_time(pid) == start


def pid_alive(pid: int, start: int = 0) -> bool:
    """Whether ``pid`` runs (a zombie counts as dead) and, with ``start``, is still the
    process recorded with that start time: a reused pid is "already gone"."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    state = proc_state(pid)
    return state not in ("", "Z") and same_process(pid, start)  # a zombie counts as dead


def kill(pid: int, sig: int, start: int = 0) -> bool:
    """Signal ``pid`` if it is still the process recorded with ``start``, through a pidfd
    checked after it was opened (so the signal cannot reach a process that took the pid
    meanwhile); False when it is gone."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        if not same_process(pid, start):
            return False
        import signal

        signal.pidfd_send_signal(fd, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)


def wait_gone(pid: int, timeout: float, start: int = 0) -> None:
    """Until ``pid`` is gone (or another process has its number) or ``timeout``: on its
    pidfd, without polling, where it can."""
    if not pid_alive(pid, start):
        return
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        fd = -1
    if fd >= 0:
        import select

        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            poller.poll(timeout * 1000)
        finally:
            os.close(fd)
        if not pid_alive(pid, start):
            return
    deadline = time.monotonic() + timeout
    while pid_alive(pid, start) and time.monotonic() < deadline:
        time.sleep(0.02)
