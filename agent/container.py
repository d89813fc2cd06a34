"""Starting container processes inside the guest: what happens between fork and exec.

Owns: the two-step fork that gives a container its namespaces (the first child makes them,
``agent/namespaces.py``; the second becomes the container's PID 1), the root filesystem
switch, the spec's mounts, devices and masked and read-only paths, the hostname, and the
order of the second child's steps: stdio, rootfs, the terminal (``agent/terminal.py``),
what the process may do (``agent/credentials.py``), the start gate that holds ``create``'s
process until ``start``, the seccomp filter, exec.

The parent learns the outcome through a ``sync`` pipe (``agent/sync.py``). Past the start
gate nobody waits (``start`` returns as runc's does): a failed exec is then written on the
process's stderr and it exits 127. A child that dies without a word (:func:`died`) is
described by how it died, or, when its cgroup counted an OOM kill, as runc says it:
"container init was OOM-killed".

The container's root is switched with pivot_root(2) and the old root detached, so nothing
of the guest's own filesystem (the agent, its Python) stays reachable from inside.  The
initramfs itself cannot be pivoted away from; the agent makes its root a bind mount of
the initramfs at boot (``boot.root_as_mount``) so that pivot_root works.  ``--no-pivot``
takes runc's fallback: MS_MOVE over "/" and chroot.
"""

from __future__ import annotations

import json
import os
import signal
import stat

from agent import cgroups, credentials, linux, namespaces, seccomp, sync, terminal
from agent.errors import SetupError

# Everything the child uses is imported here, before fork: after the chroot into the
# container's rootfs the guest's standard library is out of reach.

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_DEVICES = (
    # name, type, major, minor, mode
    ("null", stat.S_IFCHR, 1, 3, 0o666),
    ("zero", stat.S_IFCHR, 1, 5, 0o666),
    ("full", stat.S_IFCHR, 1, 7, 0o666),
    ("random", stat.S_IFCHR, 1, 8, 0o666),
    ("urandom", stat.S_IFCHR, 1, 9, 0o666),
    ("tty", stat.S_IFCHR, 5, 0, 0o666),
)
DEV_SYMLINKS = (
    ("/proc/self/fd", "fd"),
    ("/proc/self/fd/0", "stdin"),
    ("/proc/self/fd/1", "stdout"),
    ("/proc/self/fd/2", "stderr"),
    ("pts/ptmx", "ptmx"),
)


class Stdio:
    """The container side of a process's stdio: three fds, or a pty slave.

    Plain classes, not dataclasses: importing dataclasses pulls in inspect, ast and dis, which
    costs tens of milliseconds of guest boot under TCG.
    """

    __slots__ = ("stdin", "stdout", "stderr", "pty_socket")

    def __init__(
        self, stdin: int = -1, stdout: int = -1, stderr: int = -1, pty_socket: int = -1
    ) -> None:
        # pty_socket: a terminal is wanted; the child opens it in the container's own devpts
        # and sends the master back over this unix socket (as runc does with its
        # console socket), so ttyname() inside the container names the container's /dev/pts.
        self.stdin, self.stdout, self.stderr, self.pty_socket = stdin, stdout, stderr, pty_socket


class Launch:
    """Everything the child needs; built by the agent before fork."""

    __slots__ = ("process", "spec", "rootfs", "join_pid", "stdio", "cgroup_procs", "no_pivot")

    def __init__(
        self, process: dict, spec: dict | None = None, rootfs: str = "", join_pid: int = 0
    ) -> None:
        self.process = process
        self.spec = spec or {}
        self.rootfs = rootfs
        self.join_pid = join_pid  # exec: enter the namespaces of this container init
        self.stdio = Stdio()
        self.cgroup_procs = ""  # the container cgroup's cgroup.procs, joined before unshare
        self.no_pivot = False  # --no-pivot: MS_MOVE + chroot instead of pivot_root


def spawn(launch: Launch, gate: bool) -> tuple[int, int, int]:
    """Fork the process; return (pid, sync_read_fd, start_write_fd or -1).

    The caller reads the sync fd (``agent/sync.py``) to learn whether setup worked.
    """
    info_r, info_w = os.pipe()
    sync_r, sync_w = os.pipe2(os.O_CLOEXEC)
    start_r, start_w = os.pipe2(os.O_CLOEXEC) if gate else (-1, -1)
    userns = not launch.join_pid and namespaces.wants_userns(launch.spec)
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC) if userns else (-1, -1)
    go_r, go_w = os.pipe2(os.O_CLOEXEC) if userns else (-1, -1)
    first = os.fork()
    if first == 0:
        _first_child(launch, info_w, sync_w, start_r, (ready_w, go_r) if userns else None)
    for fd in (info_w, sync_w, start_r, ready_w, go_r):
        if fd >= 0:
            os.close(fd)
    map_error: SetupError | None = None
    if userns:
        if os.read(ready_r, 1) == b"U":
            try:
                namespaces.write_id_maps(first, launch.spec)
                os.write(go_w, b"G")
            except SetupError as exc:
                map_error = exc
        os.close(ready_r)
        os.close(go_w)  # without "G" the child gives up
    try:
        raw = sync.read_all(info_r)
    finally:
        os.close(info_r)
        _, status = os.waitpid(first, 0)
    try:
        pid = int(raw)
    except ValueError:
        os.close(sync_r)
        if start_w >= 0:
            os.close(start_w)
        if map_error is not None:
            raise map_error from None
        if not raw:  # it died without a word: say how, as runc does for an OOM kill
            raise SetupError(*died(launch, status)) from None
        try:
            err = json.loads(raw)
        except ValueError:
            err = {"error": raw.decode(errors="replace"), "pointer": ""}
        raise SetupError(err.get("error", ""), err.get("pointer", "")) from None
    return pid, sync_r, start_w


def died(launch: Launch, status: int | None = None) -> tuple[str, str]:
    """(message, pointer) for a setup process that died before it could report; ``status``
    is its wait status when known."""
    cgroup = os.path.dirname(launch.cgroup_procs) if launch.cgroup_procs else ""
    if cgroup and cgroups.oom_kills(cgroup) > 0:
        return (
            "container init was OOM-killed (memory limit too low?): raise the limit",
            "/linux/resources/memory/limit",
        )
    if status is None:
        how = "died"
    elif os.WIFSIGNALED(status):
        how = f"was killed by signal {os.WTERMSIG(status)}"
    else:
        how = f"exited with status {os.waitstatus_to_exitcode(status)}"
    return f"the container's setup process {how} before it could report", ""


def _first_child(
    launch: Launch,
    info_w: int,
    sync_w: int,
    start_r: int,
    userns_sync: tuple[int, int] | None,
) -> None:
    """Unshare (or join) namespaces, then fork the process that becomes the container."""
    try:
        os.setsid()
        if launch.cgroup_procs:  # before the namespaces: the cgroup path is the guest's
            with open(launch.cgroup_procs, "w") as f:
                f.write("0")
        if launch.join_pid:
            namespaces.join(launch.join_pid)
        else:
            namespaces.unshare(launch.spec, userns_sync)
        pid = os.fork()
        if pid == 0:
            os.close(info_w)
            _second_child(launch, sync_w, start_r)
        os.write(info_w, str(pid).encode())
        os._exit(0)
    except BaseException as exc:  # noqa: BLE001 - the child reports everything and exits
        try:
            pointer = exc.pointer if isinstance(exc, SetupError) else ""
            os.write(info_w, json.dumps({"error": str(exc), "pointer": pointer}).encode())
        finally:
            os._exit(1)


def _second_child(launch: Launch, sync_w: int, start_r: int) -> None:
    past_gate = False
    try:
        for sig in (signal.SIGCHLD, signal.SIGPIPE, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        _setup_stdio(launch.stdio)
        if not launch.join_pid:
            _setup_rootfs(launch.spec, launch.rootfs, launch.no_pivot)
            _setup_uts(launch.spec)
        proc = launch.process
        if launch.stdio.pty_socket >= 0:
            terminal.open_in_container(launch.stdio.pty_socket, proc, console=not launch.join_pid)
        args = proc.get("args") or []
        env = dict(e.split("=", 1) for e in proc.get("env", []) if "=" in e)
        path = find_executable(args[0] if args else "", env.get("PATH", DEFAULT_PATH))
        profile = (launch.spec.get("linux") or {}).get("seccomp")
        filter_ = seccomp.compile_filter(profile) if profile else None
        credentials.apply(proc, filter_)
        if start_r >= 0:
            sync.report(sync_w, {"ok": True})
            if os.read(start_r, 1) != b"S":
                os._exit(1)  # the agent went away or destroyed us before start
            os.close(start_r)
            past_gate = True
        if filter_ and proc.get("noNewPrivileges"):
            seccomp.load(*filter_)
        try:
            os.execve(path, args, env)
        except OSError as exc:
            raise SetupError(
                f"cannot execute {args[0]!r}: {exc.strerror}", "/process/args/0"
            ) from exc
    except SetupError as exc:
        sync.report_failure(sync_w, str(exc), exc.pointer, past_gate)
    except BaseException as exc:  # noqa: BLE001 - the child reports everything and exits
        sync.report_failure(sync_w, f"{type(exc).__name__}: {exc}", "", past_gate)
    os._exit(127)


def _setup_stdio(stdio: Stdio) -> None:
    if stdio.pty_socket >= 0:
        return  # after the rootfs: terminal.open_in_container
    for src, dst in ((stdio.stdin, 0), (stdio.stdout, 1), (stdio.stderr, 2)):
        if src >= 0:
            os.dup2(src, dst)
    for src in {stdio.stdin, stdio.stdout, stdio.stderr}:
        if src > 2:
            os.close(src)


def _inside(rootfs: str, dest: str) -> str:
    """The host-side path of ``dest`` inside rootfs; symlinks may not lead out of it."""
    parts = [p for p in dest.split("/") if p and p != "."]
    cur = rootfs
    for depth, part in enumerate(parts):
        if part == "..":
            cur = os.path.dirname(cur) if cur != rootfs else rootfs
            continue
        nxt = os.path.join(cur, part)
        hops = 0
        while os.path.islink(nxt) and hops < 40:
            target = os.readlink(nxt)
            hops += 1
            if target.startswith("/"):
                nxt = _inside(rootfs, target)
            else:
                nxt = _inside(rootfs, os.path.relpath(os.path.join(cur, target), rootfs))
        cur = nxt
        del depth
    return cur


def _mkdirs(path: str) -> None:
    os.makedirs(path, exist_ok=True)


def _setup_rootfs(spec: dict, rootfs: str, no_pivot: bool = False) -> None:
    linux_cfg = spec.get("linux", {})
    propagation = linux.PROPAGATION_FLAGS.get(
        linux_cfg.get("rootfsPropagation", "") or "rslave", linux.MS_SLAVE | linux.MS_REC
    )
    # Until the root switch "/" is a slave (pivot_root refuses shared mounts); the
    # requested propagation is applied to the new root afterwards, as runc does.
    linux.mount(None, "/", None, linux.MS_SLAVE | linux.MS_REC)
    _setup_sysctl(spec)
    linux.mount(rootfs, rootfs, None, linux.MS_BIND | linux.MS_REC)
    for i, m in enumerate(spec.get("mounts", [])):
        _do_mount(rootfs, m, f"/mounts/{i}")
    _setup_dev(rootfs, spec)
    for i, path in enumerate(linux_cfg.get("maskedPaths", [])):
        _mask(_inside(rootfs, path), f"/linux/maskedPaths/{i}")
    for i, path in enumerate(linux_cfg.get("readonlyPaths", [])):
        _readonly(_inside(rootfs, path), f"/linux/readonlyPaths/{i}")
    os.chdir(rootfs)
    if no_pivot:
        linux.mount(rootfs, "/", None, linux.MS_MOVE)
        os.chroot(".")
    else:
        # runc's pivot_root(".", "."): the old root ends up stacked under the new one and
        # is detached at once; "/" is a slave mount, so the detach does not propagate.
        linux.pivot_root(".", ".")
        linux.umount2(".", linux.MNT_DETACH)
    os.chdir("/")
    linux.mount(None, "/", None, propagation)
    if spec.get("root", {}).get("readonly"):
        linux.mount(
            None, "/", None, linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY | linux.MS_REC
        )


def _do_mount(rootfs: str, m: dict, pointer: str) -> None:
    dest = m.get("destination", "")
    if not dest.startswith("/"):
        dest = "/" + dest
    target = _inside(rootfs, dest)
    mtype = m.get("type") or ""
    source = m.get("source") or mtype or "none"
    options = m.get("options") or []
    flags, propagation, data = linux.parse_mount_options(options)
    is_bind = bool(flags & linux.MS_BIND) or mtype == "bind"
    if is_bind:
        flags |= linux.MS_BIND
        if not os.path.exists(source):
            raise SetupError(
                f"bind mount source {m.get('source')!r} does not exist in the guest share",
                pointer + "/source",
            )
        if os.path.isdir(source):
            _mkdirs(target)
        else:
            _mkdirs(os.path.dirname(target))
            if not os.path.exists(target):
                open(target, "a").close()
    else:
        _mkdirs(target)
    if mtype == "cgroup":
        mtype, source = "cgroup2", "cgroup2"
    try:
        if is_bind:
            linux.mount(source, target, None, flags & (linux.MS_BIND | linux.MS_REC))
            if flags & ~(linux.MS_BIND | linux.MS_REC):
                linux.mount(None, target, None, flags | linux.MS_REMOUNT | linux.MS_BIND)
        elif mtype == "tmpfs" and "tmpcopyup" in options:
            _tmpfs_copy_up(source, target, flags, ",".join(data))
        else:
            linux.mount(source, target, mtype, flags, ",".join(data))
        if propagation:
            linux.mount(None, target, None, propagation)
    except OSError as exc:
        raise SetupError(
            f"cannot mount {mtype or 'bind'} {m.get('source', '')!r} on {dest}: {exc.strerror}",
            pointer,
        ) from exc


def _tmpfs_copy_up(source: str, target: str, flags: int, data: str) -> None:
    """runc's ``tmpcopyup``: the tmpfs starts with a copy of the directory it covers, which
    an fd opened before the mount still reaches. Mounted writable for the copy, then made
    read-only if asked."""
    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        linux.mount(source, target, "tmpfs", flags & ~linux.MS_RDONLY, data)
        copy_tree(f"/proc/self/fd/{fd}", target)
    finally:
        os.close(fd)
    if flags & linux.MS_RDONLY:
        linux.mount(None, target, None, flags | linux.MS_REMOUNT)


def copy_tree(src: str, dst: str) -> None:
    """Copy what directory ``src`` holds into the existing directory ``dst``: files,
    directories, symlinks (as links), owners, modes and times."""
    for name in os.listdir(src):
        s, d = os.path.join(src, name), os.path.join(dst, name)
        st = os.lstat(s)
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(d)
            copy_tree(s, d)
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(s), d)
        elif stat.S_ISREG(st.st_mode):
            with open(s, "rb") as fin, open(d, "xb") as fout:
                while chunk := fin.read(1 << 20):
                    fout.write(chunk)
        else:
            os.mknod(d, st.st_mode, st.st_rdev)  # fifos, sockets, device nodes
        os.lchown(d, st.st_uid, st.st_gid)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(d, stat.S_IMODE(st.st_mode))
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _setup_dev(rootfs: str, spec: dict) -> None:
    """Default devices and /dev symlinks when /dev is a fresh tmpfs from the mounts."""
    dev = _inside(rootfs, "/dev")
    if not any(m.get("destination") == "/dev" for m in spec.get("mounts", [])):
        return
    for name, kind, major, minor, mode in DEFAULT_DEVICES:
        path = os.path.join(dev, name)
        if not os.path.exists(path):
            _make_device(path, kind, mode, major, minor)
    for i, d in enumerate(spec.get("linux", {}).get("devices", [])):
        path = _inside(rootfs, d["path"])
        kind = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}.get(
            d.get("type", ""), 0
        )
        if not kind:
            raise SetupError(f"unknown device type {d.get('type')!r}", f"/linux/devices/{i}/type")
        _mkdirs(os.path.dirname(path))
        if not os.path.exists(path):
            mode = d.get("fileMode", 0o666)
            _make_device(path, kind, mode, d.get("major", 0), d.get("minor", 0))
            os.chown(path, d.get("uid", 0), d.get("gid", 0))
    for target, name in DEV_SYMLINKS:
        path = os.path.join(dev, name)
        if not os.path.lexists(path):
            os.symlink(target, path)


def _make_device(path: str, kind: int, mode: int, major: int, minor: int) -> None:
    """mknod; in a user namespace (EPERM) bind-mount the guest's own node instead, as runc."""
    try:
        os.mknod(path, kind | mode, os.makedev(major, minor))
        os.chmod(path, mode)
        return
    except PermissionError:
        pass
    source = f"/dev/char/{major}:{minor}" if kind == stat.S_IFCHR else f"/dev/block/{major}:{minor}"
    for candidate in (source, "/dev/" + os.path.basename(path)):
        if os.path.exists(candidate):
            open(path, "a").close()
            linux.mount(candidate, path, None, linux.MS_BIND)
            return
    raise SetupError(f"cannot create device {path} in a user namespace", "/linux/devices")


def find_executable(name: str, search: str) -> str:
    """Resolve args[0] in the container as runc does: before start, so create fails on it.

    (os.execvpe would import ``warnings`` lazily, after the chroot.)
    """
    if not name:
        raise SetupError("process.args is empty", "/process/args")
    dirs = search.split(":")
    candidates = [name] if "/" in name else [os.path.join(d or ".", name) for d in dirs]
    for c in candidates:
        try:
            st = os.stat(c)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and os.access(c, os.X_OK):
            return c
    where = "" if "/" in name else " in $PATH"
    raise SetupError(f"exec: {name!r}: executable file not found{where}", "/process/args/0")


def _mask(path: str, pointer: str) -> None:
    if not os.path.lexists(path):
        return
    try:
        if os.path.isdir(path):
            linux.mount("tmpfs", path, "tmpfs", linux.MS_RDONLY, "size=0")
        else:
            linux.mount("/dev/null", path, None, linux.MS_BIND)
    except OSError as exc:
        raise SetupError(f"cannot mask {path}: {exc.strerror}", pointer) from exc


def _readonly(path: str, pointer: str) -> None:
    if not os.path.lexists(path):
        return
    try:
        linux.mount(path, path, None, linux.MS_BIND | linux.MS_REC)
        linux.mount(
            None, path, None, linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY | linux.MS_REC
        )
    except OSError as exc:
        raise SetupError(f"cannot make {path} read-only: {exc.strerror}", pointer) from exc


def _setup_sysctl(spec: dict) -> None:
    """Through the guest's /proc, before the container's /proc/sys turns read-only: net.*
    and ipc sysctls apply to the namespaces of the writing process, which are ours."""
    for key, value in sorted(spec.get("linux", {}).get("sysctl", {}).items()):
        try:
            with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                f.write(str(value))
        except OSError as exc:
            raise SetupError(
                f"cannot set sysctl {key}={value}: {exc.strerror}", "/linux/sysctl/" + key
            ) from exc


def _setup_uts(spec: dict) -> None:
    if spec.get("hostname"):
        linux.sethostname(spec["hostname"])
    if spec.get("domainname"):
        linux.setdomainname(spec["domainname"])
