"""The keeper of one VM template: a small process that holds the template's memory and saved
device state, and hands them to every pod that starts from it.

Owns two sealed memfds (write, grow, shrink and seal sealed, so nobody can change them: not
a pod's QEMU, even one the guest took over, which maps the memory copy-on-write) and the
unix socket ``DIR/KEY/keeper.sock`` (root only) on which it answers each connection with
the two descriptors (SCM_RIGHTS) and the template's metadata as one JSON line, then closes
it. A memfd lives as long as a process holds it: the keeper is that process (after Kata's
template factory, which keeps its template on a tmpfs mount). It runs until SIGTERM
(``hyperpy template rm``) or the host reboots; :func:`settle` says what it does first.

Started by ``vm/template.py`` under ``python -S`` (``launcher.lean_argv``) with ``DIR MEM_FD
STATE_FD READY_FD META_JSON``, the fds inherited; it reports ``ok`` on READY_FD once the
socket is listening (or ``error: ...``). The socket path is made by a rename, so a client
either finds a complete keeper or none.
"""

from __future__ import annotations

import array
import json
import os
import signal
import socket
import sys

from hyperpy.sandbox import record

SOCKET = "keeper.sock"
META = "meta.json"
CGROUP = "hyperpy-templates"  # the host cgroup keepers (and template VMs) run in


def seals() -> int:
    """What a template's memfds are sealed against: any change, and removing the seals."""
    import fcntl

    return fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


def serve(directory: str, mem_fd: int, state_fd: int, meta: dict, ready_fd: int) -> None:
    import fcntl

    for fd in (mem_fd, state_fd):
        if fcntl.fcntl(fd, fcntl.F_GET_SEALS) & seals() != seals():
            raise SystemExit("keeper: the template's memfds must be sealed")
    meta = {**meta, "pid": os.getpid(), "start": record.start_time(os.getpid())}
    line = (json.dumps(meta) + "\n").encode()
    os.chdir(directory)  # relative names: a long directory still fits sun_path
    with open(f"{META}.tmp", "w") as f:
        f.write(line.decode())
    os.rename(f"{META}.tmp", META)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    if os.path.lexists(f"{SOCKET}.tmp"):
        os.unlink(f"{SOCKET}.tmp")
    old = os.umask(0o077)
    try:
        srv.bind(f"{SOCKET}.tmp")
    finally:
        os.umask(old)
    srv.listen(64)
    os.rename(f"{SOCKET}.tmp", SOCKET)
    os.write(ready_fd, b"ok\n")
    os.close(ready_fd)
    fds = array.array("i", [mem_fd, state_fd])
    while True:
        conn, _ = srv.accept()
        try:
            conn.settimeout(2.0)
            conn.sendmsg([line], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
        except OSError:
            pass
        finally:
            conn.close()


def settle(directory: str, mem_fd: int) -> None:
    """Take the template over: one keeper per directory (a flock held for life), out of the
    pod's network namespace and cgroup, and every page of the memory allocated.

    The last is what keeps pods from growing the template: a write fault in a private
    mapping of a file allocates the page in the file first (then copies it), seals or not;
    with every page there, a pod's writes cost it only its own copies. It costs the VM's
    memory size once per template, charged to the ``hyperpy-templates`` cgroup."""
    import fcntl

    from agent import linux
    from hyperpy.hostcgroup import HostCgroup

    lock = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)  # kept open: the flock lives
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OSError(f"another keeper serves {directory}") from None
    linux.unshare(linux.CLONE_NEWNET)  # let go of the pod's network namespace
    cgroup = HostCgroup(CGROUP)
    cgroup.create()
    cgroup.add(os.getpid())
    os.posix_fallocate(mem_fd, 0, os.fstat(mem_fd).st_size)


def main(argv: list[str]) -> None:
    directory, mem_fd, state_fd, ready_fd, meta = argv
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        settle(directory, int(mem_fd))
        serve(directory, int(mem_fd), int(state_fd), json.loads(meta), int(ready_fd))
    except Exception as exc:  # noqa: BLE001 - said on the ready pipe, in the builder's log
        os.write(int(ready_fd), f"error: {exc}\n".encode())
        raise SystemExit(1) from None
