"""Linux system calls the standard library does not wrap (Python 3.11), through ctypes.

Owns: mount, umount2, unshare, setns, pivot_root, sethostname/setdomainname, reboot,
prctl, capset, the file-descriptor mount API (open_tree, move_mount, mount_setattr) with
openat2, and the flag tables that turn OCI mount options into mount(2) flags.
Every failure raises OSError with errno and the call that failed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

_libc = ctypes.CDLL(None, use_errno=True)

# clone(2) namespace flags, keyed by OCI namespace type.
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080
NAMESPACE_FLAGS = {
    "mount": CLONE_NEWNS,
    "cgroup": CLONE_NEWCGROUP,
    "uts": CLONE_NEWUTS,
    "ipc": CLONE_NEWIPC,
    "user": CLONE_NEWUSER,
    "pid": CLONE_NEWPID,
    "network": CLONE_NEWNET,
    "time": CLONE_NEWTIME,
}
# /proc/<pid>/ns/<name> for each OCI namespace type.
NAMESPACE_FILES = {
    "mount": "mnt",
    "cgroup": "cgroup",
    "uts": "uts",
    "ipc": "ipc",
    "user": "user",
    "pid": "pid",
    "network": "net",
    "time": "time",
}

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25
MNT_DETACH = 2

# OCI/fstab mount options -> (clear these flags, set these flags).
MOUNT_FLAGS: dict[str, tuple[int, int]] = {
    "ro": (0, MS_RDONLY),
    "rw": (MS_RDONLY, 0),
    "nosuid": (0, MS_NOSUID),
    "suid": (MS_NOSUID, 0),
    "nodev": (0, MS_NODEV),
    "dev": (MS_NODEV, 0),
    "noexec": (0, MS_NOEXEC),
    "exec": (MS_NOEXEC, 0),
    "sync": (0, MS_SYNCHRONOUS),
    "async": (MS_SYNCHRONOUS, 0),
    "dirsync": (0, MS_DIRSYNC),
    "remount": (0, MS_REMOUNT),
    "mand": (0, MS_MANDLOCK),
    "nomand": (MS_MANDLOCK, 0),
    "atime": (MS_NOATIME, 0),
    "noatime": (0, MS_NOATIME),
    "diratime": (MS_NODIRATIME, 0),
    "nodiratime": (0, MS_NODIRATIME),
    "bind": (0, MS_BIND),
    "rbind": (0, MS_BIND | MS_REC),
    "relatime": (0, MS_RELATIME),
    "norelatime": (MS_RELATIME, 0),
    "strictatime": (0, MS_STRICTATIME),
    "nostrictatime": (MS_STRICTATIME, 0),
    "lazytime": (0, MS_LAZYTIME),
    "nolazytime": (MS_LAZYTIME, 0),
    "nosymfollow": (0, MS_NOSYMFOLLOW),
    "silent": (0, MS_SILENT),
    "loud": (MS_SILENT, 0),
}
PROPAGATION_FLAGS = {
    "private": MS_PRIVATE,
    "rprivate": MS_PRIVATE | MS_REC,
    "shared": MS_SHARED,
    "rshared": MS_SHARED | MS_REC,
    "slave": MS_SLAVE,
    "rslave": MS_SLAVE | MS_REC,
    "unbindable": MS_UNBINDABLE,
    "runbindable": MS_UNBINDABLE | MS_REC,
}

PR_SET_PDEATHSIG = 1
PR_SET_KEEPCAPS = 8
PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

RB_AUTOBOOT = 0x01234567
RB_POWER_OFF = 0x4321FEDC


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data or None)),
        f"mount {source or 'none'} on {target} (type {fstype or '-'}, flags {flags:#x}, {data!r})",
    )


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), f"umount {target}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), f"unshare({flags:#x})")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.setns(fd, nstype), f"setns({fd}, {nstype:#x})")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(155, _b(new_root), _b(put_old)), f"pivot_root {new_root}")


# openat2(2) resolve flags, open_tree(2)/move_mount(2)/mount_setattr(2) flags (x86_64).
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x04
MOVE_MOUNT_T_EMPTY_PATH = 0x40
MOUNT_ATTR_RDONLY = 0x01
MOUNT_ATTR_NOSUID = 0x02
MOUNT_ATTR_NODEV = 0x04
MOUNT_ATTR_NOEXEC = 0x08
UMOUNT_NOFOLLOW = 8


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]  # fmt: skip


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2): ``path`` below ``dirfd`` resolved under ``resolve`` (RESOLVE_* flags)."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    return _check(
        _libc.syscall(437, dirfd, _b(path), ctypes.byref(how), ctypes.sizeof(how)),
        f"openat2 {path!r}",
    )


def open_tree(dirfd: int, path: str, flags: int) -> int:
    """open_tree(2): with OPEN_TREE_CLONE a detached copy of the mount tree at ``path``."""
    return _check(_libc.syscall(428, dirfd, _b(path), ctypes.c_uint(flags)), f"open_tree {path!r}")


def move_mount(from_fd: int, to_fd: int, flags: int, what: str) -> None:
    """move_mount(2) between two file descriptors (empty paths)."""
    _check(_libc.syscall(429, from_fd, b"", to_fd, b"", ctypes.c_uint(flags)), f"move_mount {what}")


def mount_setattr(fd: int, flags: int, attr_set: int, propagation: int = 0) -> None:
    """mount_setattr(2) on the mount (tree, with AT_RECURSIVE) that ``fd`` refers to."""
    attr = _MountAttr(attr_set, 0, propagation, 0)
    _check(
        _libc.syscall(442, fd, b"", ctypes.c_uint(flags | AT_EMPTY_PATH), ctypes.byref(attr),
                      ctypes.sizeof(attr)),
        "mount_setattr",
    )  # fmt: skip


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), f"sethostname {name!r}")


def setdomainname(name: str) -> None:
    raw = name.encode()
    _check(_libc.setdomainname(raw, len(raw)), f"setdomainname {name!r}")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(
        _libc.prctl(
            option,
            ctypes.c_ulong(arg2),
            ctypes.c_ulong(arg3),
            ctypes.c_ulong(arg4),
            ctypes.c_ulong(arg5),
        ),
        f"prctl({option})",
    )


def reboot(cmd: int) -> None:
    _libc.sync()
    _check(_libc.reboot(cmd), "reboot")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set the calling thread's capability sets (64-bit masks, _LINUX_CAPABILITY_VERSION_3)."""
    hdr = _CapHeader(0x20080522, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_libc.capset(ctypes.byref(hdr), data), "capset")


def seccomp_set_filter(program: bytes, flags: int = 0) -> None:
    """Install a classic BPF seccomp program (a sequence of 8-byte sock_filter entries)."""

    class _SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    prog = _SockFprog(len(program) // 8, program)
    if flags:
        _check(_libc.syscall(317, 1, flags, ctypes.byref(prog)), "seccomp(SET_MODE_FILTER)")
    else:
        prctl_ptr = ctypes.cast(ctypes.byref(prog), ctypes.c_void_p).value or 0
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, prctl_ptr)


# runc's extensions: options that ask the runtime for a step, never passed to mount(2).
# tmpcopyup: a tmpfs starts with a copy of what the directory it covers holds (podman
# writes it for --tmpfs and --read-only's /run, /tmp and /var/tmp).
MOUNT_EXTENSIONS = frozenset({"tmpcopyup"})


def parse_mount_options(options: list[str]) -> tuple[int, int, list[str]]:
    """OCI mount options -> (flags, propagation flags, fs-specific data options); runc's
    extensions (:data:`MOUNT_EXTENSIONS`) are in none of them."""
    flags = 0
    propagation = 0
    data: list[str] = []
    for opt in options:
        if opt in MOUNT_EXTENSIONS:
            continue
        if opt in MOUNT_FLAGS:
            clear, set_ = MOUNT_FLAGS[opt]
            flags = (flags & ~clear) | set_
        elif opt in PROPAGATION_FLAGS:
            propagation |= PROPAGATION_FLAGS[opt]
        else:
            data.append(opt)
    return flags, propagation, data


def loopback_up() -> None:
    """Bring ``lo`` of the current network namespace up, as runc does for a new one."""
    import fcntl
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        ifreq = fcntl.ioctl(sock, 0x8913, struct.pack("16sH22x", b"lo", 0))  # SIOCGIFFLAGS
        flags = struct.unpack_from("16sH", ifreq)[1] | 0x1  # IFF_UP
        fcntl.ioctl(sock, 0x8914, struct.pack("16sH22x", b"lo", flags))  # SIOCSIFFLAGS


@contextlib.contextmanager
def in_netns(fd: int) -> Iterator[None]:
    """Run the block in network namespace ``fd`` (sockets made there stay there), then
    come back."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd, CLONE_NEWNET)
        try:
            yield
        finally:
            setns(own, CLONE_NEWNET)
    finally:
        os.close(own)


RNDADDENTROPY = 0x40085203  # _IOW('R', 0x03, int[2])
RNDRESEEDCRNG = 0x5207  # _IO('R', 0x07)


def reseed_rng(entropy: bytes) -> None:
    """Credit ``entropy`` (fresh bytes from the host) to the kernel's pool and reseed the
    CRNG from it at once: guests restored from one template must not share a future."""
    import fcntl
    import struct

    info = struct.pack("ii", len(entropy) * 8, len(entropy)) + entropy  # rand_pool_info
    fd = os.open("/dev/random", os.O_WRONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, RNDADDENTROPY, info)
        fcntl.ioctl(fd, RNDRESEEDCRNG)
    finally:
        os.close(fd)
