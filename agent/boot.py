"""What the guest's PID 1 does around serving the host: its first mounts, the 9p shares,
finding the channel to the host, and powering the guest off.

Owns, inside the guest: making "/" a mount pivot_root can leave (``root_as_mount``), the
early mounts (proc, sys, dev, devpts, shm, /run, cgroup2), mounting the two 9p exports
(at ``hello``: a VM template is saved before any is mounted), the kernel command line's
``hyperpy.*`` keys, opening the channel (a named virtio-serial port, or vsock), and the
power-off that ends QEMU. Used by ``agent/main.py``; standard library only.
"""

from __future__ import annotations

import errno
import os
import socket
import time

from agent import linux
from agent import protocol as P

SHARE_DIR = P.GUEST_SHARE_DIR


def root_as_mount() -> None:
    """Make "/" a bind mount of the initramfs instead of the initramfs itself.

    pivot_root(2) refuses to move away from the initial rootfs (it has no parent mount); a
    bind mount of it, moved over "/", has one, so containers can pivot_root.  No copy.
    """
    os.makedirs("/.root", exist_ok=True)
    linux.mount("/", "/.root", None, linux.MS_BIND | linux.MS_REC)
    os.chdir("/.root")
    linux.mount("/.root", "/", None, linux.MS_MOVE)
    os.chroot(".")
    os.chdir("/")


def early_mounts() -> None:
    specs = [
        ("proc", "/proc", "proc", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC, ""),
        ("sysfs", "/sys", "sysfs", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC, ""),
        ("devtmpfs", "/dev", "devtmpfs", linux.MS_NOSUID, "mode=0755"),
        ("devpts", "/dev/pts", "devpts", linux.MS_NOSUID | linux.MS_NOEXEC, "ptmxmode=0666"),
        ("shm", "/dev/shm", "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=1777"),
        ("tmpfs", "/run", "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=0755"),
        ("cgroup2", "/sys/fs/cgroup", "cgroup2", linux.MS_NOSUID | linux.MS_NODEV, ""),
    ]
    for source, target, fstype, flags, data in specs:
        os.makedirs(target, exist_ok=True)
        try:
            linux.mount(source, target, fstype, flags, data)
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise


def mount_shares(share_tag: str) -> None:
    """The two 9p exports: the writable share and the image (which the host serves
    read-only, or written through with ``[vm] files = "faithful"``: QEMU decides, so the
    guest mounts it read-write; ``cache=mmap`` for shared writable mappings)."""
    for tag, target, cache in ((share_tag, SHARE_DIR, "none"), (P.IMAGE_TAG, P.GUEST_IMAGE_DIR,
                                "mmap")):  # fmt: skip
        os.makedirs(target, exist_ok=True)
        try:
            linux.mount(
                tag, target, "9p", 0, f"trans=virtio,version=9p2000.L,msize=262144,cache={cache}"
            )
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # no share device: a bare boot
                raise


def kernel_params() -> dict[str, str]:
    with open("/proc/cmdline") as f:
        words = f.read().split()
    return dict(w.split("=", 1) for w in words if "=" in w and w.startswith("hyperpy."))


def open_channel(spec: str, timeout: float = 10.0) -> int:
    kind, _, name = spec.partition(":")
    if kind == "vsock":
        srv = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        srv.bind((socket.VMADDR_CID_ANY, int(name)))
        srv.listen(1)
        conn, _ = srv.accept()
        srv.close()
        return conn.detach()
    if kind != "serial":
        raise SystemExit(f"hyperpy agent: unknown channel {spec!r}")
    deadline = time.monotonic() + timeout
    while True:
        for port in os.listdir("/sys/class/virtio-ports"):
            try:
                with open(f"/sys/class/virtio-ports/{port}/name") as f:
                    if f.read().strip() == name:
                        return os.open(f"/dev/{port}", os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                continue
        if time.monotonic() > deadline:
            raise SystemExit(f"hyperpy agent: no virtio-serial port named {name!r}")
        time.sleep(0.01)


def poweroff() -> None:
    os.sync()
    # The VM runs with -no-reboot and reboot=t: a reboot ends QEMU on every machine type.
    linux.reboot(linux.RB_AUTOBOOT)
