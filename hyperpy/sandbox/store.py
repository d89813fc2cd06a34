"""Container state under --root: one directory per id, state.json written atomically.

Owns the layout of a container's state directory, the schema-versioned state.json (temp
file, fsync, rename), the per-id lock (flock on the directory itself) and making an id
exactly once (mkdir is atomic: a raced create has one winner). Deleting renames the
directory aside under the lock before removing it, so a waiter finds it gone.

Layout of ``<root>/<id>/``::

    state.json     this module's record          monitor.sock  the sandbox monitor
    exit.json      init's exit status (monitor)  monitor.log   the monitor's log
    console.log    guest serial console          qemu.log      QEMU's stderr
    share-rw/, shared/, share.json   the 9p export and its record (hyperpy/share.py)
    jail/          QEMU's root, a tmpfs in QEMU's own mount namespace (hyperpy/vm/jail.py)

QEMU gets its QMP and agent channels as socketpair ends and its console as a file
descriptor: it can write nothing in this directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field

from hyperpy.errors import ContainerExists, ContainerNotFound, HyperpyError, UsageError
from hyperpy.sandbox.model import Status

SCHEMA_VERSION = 1
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}")  # whole id: fullmatch ($ allows a \n)


@dataclass
class State:
    id: str
    bundle: str
    rootfs: str
    created: str
    status: str = Status.CREATING.value
    pid: int = 0
    monitor_pid: int = 0
    qemu_pid: int = 0
    owner: str = ""
    annotations: dict[str, str] = field(default_factory=dict)
    init_proc: int = 0
    terminal: bool = False
    cgroups_path: str = ""
    host_cgroup: str = ""  # below each hierarchy's root; empty: not placed
    hooks: dict = field(default_factory=dict)  # config.json's hooks, for start and delete
    sandbox: str = ""  # the id whose VM this container joined; empty: it owns its VM
    schema: int = SCHEMA_VERSION


def check_id(cid: str) -> None:
    if not isinstance(cid, str) or not ID_RE.fullmatch(cid):
        raise UsageError(
            f"invalid container id {cid!r}: use 1-128 characters of letters, digits, "
            "'_', '.', '+' and '-', starting with a letter or digit"
        )


class Store:
    def __init__(self, root: str) -> None:
        self.root = root

    def dir(self, cid: str) -> str:
        check_id(cid)
        return os.path.join(self.root, cid)

    def _bad_root(self, exc: OSError) -> UsageError:
        return UsageError(
            f"--root {self.root}: {exc.strerror}: pass a directory hyperpy can create and "
            "write (the default is /run/hyperpy)"
        )

    def ids(self) -> list[str]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise self._bad_root(exc) from None
        return sorted(
            n for n in names if ID_RE.fullmatch(n) and os.path.isdir(os.path.join(self.root, n))
        )

    def make(self, cid: str) -> str:
        path = self.dir(cid)
        try:
            os.makedirs(self.root, mode=0o711, exist_ok=True)
            os.mkdir(path, 0o700)
        except FileExistsError:
            if not os.path.isdir(self.root):
                raise UsageError(f"--root {self.root} is not a directory") from None
            raise ContainerExists(f"container {cid!r} already exists (under {self.root})") from None
        except OSError as exc:
            raise self._bad_root(exc) from None
        return path

    @contextlib.contextmanager
    def locked(self, cid: str) -> Iterator[str]:
        path = self.dir(cid)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise ContainerNotFound(
                f"container {cid!r} does not exist (under {self.root})"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not os.path.exists(os.path.join(path, "state.json")) and not os.path.isdir(path):
                raise ContainerNotFound(f"container {cid!r} does not exist (under {self.root})")
            yield path
        finally:
            os.close(fd)

    def load(self, cid: str) -> State:
        path = os.path.join(self.dir(cid), "state.json")
        try:
            with open(path) as f:
                raw = json.load(f)
        except (FileNotFoundError, NotADirectoryError):
            raise ContainerNotFound(
                f"container {cid!r} does not exist (under {self.root})"
            ) from None
        except ValueError as exc:
            raise ContainerNotFound(
                f"container {cid!r}: state file {path} is corrupt: {exc}"
            ) from exc
        known = {f.name for f in dataclasses.fields(State)}
        return State(**{k: v for k, v in raw.items() if k in known})

    def save(self, state: State) -> None:
        write_json_atomic(os.path.join(self.dir(state.id), "state.json"), dataclasses.asdict(state))

    def remove(self, cid: str) -> None:
        """Remove the state dir; refused while anything is mounted below it (a recursive
        removal would go on into the mounted rootfs or volume and delete the user's files)."""
        path = self.dir(cid)
        if not os.path.lexists(path):
            return
        if left := mounts_below(path):
            raise HyperpyError(
                f"cannot remove {path}: still mounted below it: {', '.join(left)}; unmount "
                "them (umount -l) and run delete again"
            )
        aside = os.path.join(self.root, f".deleting-{cid}-{os.getpid()}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return
        shutil.rmtree(aside, ignore_errors=True)


def mounts_below(path: str) -> list[str]:
    """Mount points at or below ``path`` (from the kernel's mount table), deepest first."""
    path = os.path.realpath(path)
    found = set()
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            for line in f:
                raw = line.split()[4]
                point = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), raw)
                text = os.fsdecode(point)
                if text == path or text.startswith(path + "/"):
                    found.add(text)
    except OSError:
        return []
    return sorted(found, key=lambda p: (-p.count("/"), p))


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


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    state = proc_state(pid)
    return state not in ("", "Z")  # a zombie counts as dead
