"""VM templates, after Kata's template factory and runV: boot once, start every later pod
from a copy of that booted VM.

Owns the catalog of templates, one per VM shape: its key, its keeper (started with a built
template's memfds, asked for them by each later pod), the build lock and failed-build marks,
and listing and removing templates. Saving a VM and restoring one from a template is the
snapshot step's (``vm/snapshot.py``).

- **Key**: a hash of the template VM's whole QEMU command line as the jail sees it (machine,
  vCPUs, memory, kernel command line, every device, fds and the pod's name left out), the
  identity (device, inode, size, mtime) of the QEMU binary, kernel and initrd, and the agent
  protocol version. A change to any of them makes a new template.
- **Build** (the first pod of a shape; after a failed build, pods of that shape boot cold
  for ten minutes, ``KEY.failed``): the snapshot step saves a VM booted to the agent's
  ``ready`` event (before ``hello``: the guest has mounted nothing from the host, so 9p does
  not block migration, and no pod's data is in it) into two sealed memfds, handed to a
  keeper process (``vm/keeper.py``). One pod builds (``KEY.lock``, flock, not waited for); a
  pod that finds it held boots cold.
- **Restore**: the snapshot step starts the pod's QEMU from them. The monitor's ``hello``
  then sets the guest clock, reseeds its RNG with fresh host entropy and mounts the pod's
  shares. A template that fails to restore is removed and the pod boots cold (a warning in
  monitor.log), never a failed container.

Where templates live: ``[template] dir`` (default /run/hyperpy/templates) holds per
template ``KEY/keeper.sock`` and ``KEY/meta.json`` and the builder's ``KEY.lock``; the memory
and the state are memfds held by the keeper (in the ``hyperpy-templates`` host cgroup),
never files. ``hyperpy template rm`` stops keepers and removes their directories; a reboot
drops them all.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Iterable
from typing import NamedTuple

from agent import protocol as P
from hyperpy import launcher, proc
from hyperpy.errors import UsageError, VMError
from hyperpy.sandbox import record
from hyperpy.vm import keeper
from hyperpy.vm.snapshot import Launcher, build

log = logging.getLogger(__name__)

FORMAT = 1  # what a template is made of; bumped when that changes
FETCH_TIMEOUT = 2.0
KEEPER_TIMEOUT = 10.0
FAILED_FOR = 600.0  # a shape whose template failed to build boots cold this long
_FD = re.compile(r"(fd[=:/])\d+")
_KEY = re.compile(r"[0-9a-f]{32}")


class Held(NamedTuple):
    """A template as a pod gets it from the keeper: its memory, its state, its metadata."""

    mem: int
    state: int
    meta: dict

    def close(self) -> None:
        for fd in (self.mem, self.state):
            with contextlib.suppress(OSError):
                os.close(fd)


def key(argv: Iterable[str], files: Iterable[str]) -> str:
    """The template key of a VM with QEMU command line ``argv`` (jailed paths, no name)."""
    h = hashlib.sha256(f"hyperpy-template {FORMAT} protocol {P.PROTOCOL_VERSION}\n".encode())
    for arg in argv:
        h.update(_FD.sub(r"\1#", arg).encode() + b"\0")
    for path in files:
        st = os.stat(path)
        real = os.path.realpath(path)
        h.update(f"{real} {st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


class Store:
    """The templates under one directory."""

    def __init__(self, directory: str) -> None:
        self.dir = directory

    def path(self, k: str, *names: str) -> str:
        if not _KEY.fullmatch(k):
            raise UsageError(f"{k!r} is not a template key (see `hyperpy template ls`)")
        return os.path.join(self.dir, k, *names)

    def fetch(self, k: str) -> Held | None:
        """The template's descriptors from its keeper, or None if there is no live one."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(FETCH_TIMEOUT)
        try:
            d = os.open(self.path(k), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            sock.connect(f"/proc/self/fd/{d}/{keeper.SOCKET}")  # fits sun_path
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            if int.from_bytes(creds[4:8], sys.byteorder) != os.geteuid():
                raise OSError(f"the keeper socket of {k} is served by another user")
            fds = array.array("i")
            data, ancdata, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(2 * fds.itemsize))
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        except OSError:
            return None
        finally:
            sock.close()
            os.close(d)
        if len(fds) != 2 or not all(_sealed(fd) for fd in fds):
            log.warning("template %s: its keeper did not hand over two sealed memfds", k)
            for fd in fds:
                os.close(fd)
            return None
        try:
            meta = json.loads(data)
        except ValueError:
            meta = {}
        return Held(fds[0], fds[1], meta)

    def try_lock(self, k: str) -> int | None:
        """The builder's lock of template ``k``, or None if another pod holds it."""
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        st = os.lstat(self.dir)
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise OSError(f"{self.dir} must be a directory of this user's that no one else can "
                          "write: set [template] dir to one")  # fmt: skip
        fd = os.open(os.path.join(self.dir, f"{k}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def list(self) -> list[dict]:
        out = []
        with contextlib.suppress(FileNotFoundError):
            for k in sorted(os.listdir(self.dir)):
                if not _KEY.fullmatch(k):
                    continue
                try:
                    with open(self.path(k, keeper.META)) as f:
                        meta = json.load(f)
                except (OSError, ValueError):
                    continue
                meta["alive"] = _is_keeper(meta.get("pid"), self.path(k), meta.get("start", 0))
                out.append(meta)
        return out

    def remove(self, k: str, timeout: float = 5.0, keeper_pid: object = None) -> bool:
        """Stop template ``k``'s keeper and remove its files; False if there was none, or
        if its keeper is no longer ``keeper_pid`` (another pod built a new one since)."""
        directory = self.path(k)
        if not os.path.isdir(directory):
            return False  # its lock, if any, is sweep_locks's
        with contextlib.suppress(OSError, ValueError), open(self.path(k, keeper.META)) as f:
            meta = json.load(f)
            pid, start = meta.get("pid"), meta.get("start", 0)
            if keeper_pid is not None and pid != keeper_pid:
                return False
            if _is_keeper(pid, directory, start):
                _stop(pid, timeout, start)
        for name in (keeper.SOCKET, keeper.META, f"{keeper.SOCKET}.tmp", f"{keeper.META}.tmp"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(k, name))
        with contextlib.suppress(OSError):
            os.rmdir(directory)
        return True

    def mark_failed(self, k: str, error: str) -> None:
        """Remember that building ``k`` failed: pods of that shape boot cold for a while."""
        with contextlib.suppress(OSError), open(self._failed(k), "w") as f:
            json.dump({"time": time.time(), "error": error[:500]}, f)

    def failed_recently(self, k: str) -> str:
        try:
            with open(self._failed(k)) as f:
                failed = json.load(f)
            if time.time() - float(failed["time"]) < FAILED_FOR:
                return str(failed.get("error", "?"))
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return ""

    def _failed(self, k: str) -> str:
        return os.path.join(os.path.dirname(self.path(k)), f"{k}.failed")

    def sweep_locks(self) -> None:
        """Remove the failed-build marks, and the build locks no pod holds (a lock in use
        stays: unlinking it would let a second pod build the same template beside the
        first)."""
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.dir):
                if name.endswith(".failed") and _KEY.fullmatch(name[:-7]):
                    os.unlink(os.path.join(self.dir, name))
                k = name[:-5]
                if name.endswith(".lock") and _KEY.fullmatch(k) and not os.path.isdir(self.path(k)):
                    lock = self.try_lock(k)
                    if lock is not None:
                        os.unlink(os.path.join(self.dir, name))
                        os.close(lock)

    async def obtain(self, k: str, launch: Launcher, memory_mb: int, timeout: float,
                     balloon_mb: int = 0) -> Held | None:  # fmt: skip
        """Template ``k``, built now if no pod has; None when another pod is building it,
        the build failed, or this pod may not start a keeper (logged: the pod boots cold)."""
        held = self.fetch(k)
        if held is not None:
            return held
        reaper = waiting_reaper()
        if reaper:
            log.info("no template %s yet, and none is built under %s, which waits for every "
                     "process below it (a keeper would keep it): booting cold; `hyperpy "
                     "template build` makes one outside", k, reaper)  # fmt: skip
            return None
        why = self.failed_recently(k)
        if why:  # a shape whose build fails (QEMU, kernel) would cost every pod two boots
            log.info("template %s failed to build lately (%s): booting cold", k, why)
            return None
        try:
            lock = self.try_lock(k)
        except OSError as exc:
            log.warning("no template (%s): booting cold", exc)
            return None
        if lock is None:
            log.info("template %s is being built by another pod: booting cold", k)
            return None
        try:
            held = self.fetch(k)  # built while this pod waited for the lock
            if held is None:
                self.remove(k)  # a dead keeper's leftovers
                start = time.monotonic()
                mem, state = await build(launch, memory_mb, timeout, balloon_mb)
                try:
                    meta = {"key": k, "memory_mb": memory_mb, "created": time.time(),
                            "build_s": round(time.monotonic() - start, 3),
                            "state_bytes": os.fstat(state).st_size}  # fmt: skip
                    self.start_keeper(k, mem, state, meta)
                    log.info("template %s built in %.2fs", k, meta["build_s"])
                finally:
                    os.close(mem)
                    os.close(state)
                held = self.fetch(k)
        except (VMError, OSError) as exc:
            log.warning("template %s could not be built (%s): booting cold", k, exc)
            self.remove(k)
            self.mark_failed(k, str(exc).splitlines()[0])
            return None
        finally:
            os.close(lock)
        return held

    def start_keeper(self, k: str, mem: int, state: int, meta: dict) -> None:
        os.makedirs(self.path(k), mode=0o700, exist_ok=True)

        def argv(ready_fd: int) -> list[str]:
            return launcher.lean_argv("hyperpy.vm.keeper", self.path(k), str(mem), str(state),
                                      str(ready_fd), json.dumps(meta))  # fmt: skip

        what = "the template keeper"
        # it outlives this process (and the pod): nobody waits for it
        proc.spawn_ready(argv, what, KEEPER_TIMEOUT, proc.said_ok(what), pass_fds=(mem, state),
                         env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, cwd="/",
                         disown=True)  # fmt: skip


def _sealed(fd: int) -> bool:
    try:
        return fcntl.fcntl(fd, fcntl.F_GET_SEALS) & keeper.seals() == keeper.seals()
    except OSError:
        return False


# Supervisors that, as a child subreaper, wait for every process below them before they
# exit: a keeper (which outlives its pod) started below one would keep it alive. conmon
# (podman) does; containerd's shim and dockerd do not.
WAITING_REAPERS = ("conmon",)


def waiting_reaper(pid: int | None = None) -> str:
    """The name of an ancestor of ``pid`` (default: this process) in WAITING_REAPERS, or ""."""
    pid = os.getppid() if pid is None else pid
    for _ in range(64):
        if pid <= 1:
            return ""
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                text = f.read()
        except OSError:
            return ""
        comm = text[text.index(b"(") + 1 : text.rindex(b")")].decode(errors="replace")
        if comm in WAITING_REAPERS:
            return comm
        pid = int(text[text.rindex(b")") + 2 :].split()[1])
    return ""


def _is_keeper(pid: object, directory: str, start: int = 0) -> bool:
    """Whether ``pid`` is still the keeper of ``directory`` (pids are reused: its start
    time, as the keeper recorded it, and its command line say)."""
    return (
        isinstance(pid, int)
        and record.pid_alive(pid, start)
        and record.cmdline_names(pid, "hyperpy.vm.keeper")
        and record.cmdline_names(pid, f"\0{directory}\0")
    )


def _stop(pid: int, timeout: float, start: int = 0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not record.kill(pid, sig, start):
            return
        record.wait_gone(pid, timeout, start)
        if not record.pid_alive(pid, start):
            return
