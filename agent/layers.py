"""A container's root in the guest: the bundle's rootfs itself, or the image read-only under
a writable layer in memory.

Owns mounting and removing the root each container runs on, and the memory-backed volumes
that live only in the guest (:func:`ephemeral`). With ``[vm] files = "faithful"`` (the
host's ``root_layer: "host"``) the root is the bundle's rootfs on the image share, bound
as it is: the container writes through to the host as under runc (9p passthrough: real
owners, modes and types; bounded by the host's disk). With ``"strict"`` the host exports
the rootfs read-only (QEMU refuses every write) and the container's writes go to an upper
layer on a tmpfs of its own in the guest: whatever it makes in its root (setuid files,
device nodes, FIFOs, sockets, new owners) exists only in the guest, working as on a local
disk, charged to the container's memory cgroup, at most half the VM's RAM (tmpfs's
default), and gone with the container (as gVisor's in-memory root overlay).

Overlay options: no index and no inode number mapping (9p has no file handles to index by).
"""

from __future__ import annotations

import contextlib
import os

from agent import linux
from agent.errors import SetupError
from agent.protocol import GUEST_EPHEMERAL_DIR, GUEST_IMAGE_DIR

ROOTS = "/run/hyperpy/rootfs"  # the merged roots
LAYERS = "/run/hyperpy/layers"  # a tmpfs per container: upper/ and work/
OPTIONS = "index=off,xino=off"


def mount(cid: str, image: str, on_host: bool = False) -> str:
    """Mount container ``cid``'s root: ``image`` (below the image share) itself when
    ``on_host``, else under a fresh writable layer. Returns the root's directory."""
    lower = os.path.join(GUEST_IMAGE_DIR, image)
    if not os.path.isdir(lower):
        raise SetupError(f"rootfs {image!r} is not in the guest's image share", "/root/path")
    layer, merged = os.path.join(LAYERS, cid), os.path.join(ROOTS, cid)
    os.makedirs(merged, 0o755, exist_ok=True)
    if on_host:  # a mount of its own, for pivot_root
        try:
            linux.mount(lower, merged, None, linux.MS_BIND | linux.MS_REC)
        except OSError as exc:
            remove(cid)
            raise SetupError(f"cannot mount the container's root: {exc.strerror}",
                             "/root/path") from exc  # fmt: skip
        return merged
    os.makedirs(layer, 0o700, exist_ok=True)
    try:
        linux.mount("tmpfs", layer, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=0700")
        upper, work = os.path.join(layer, "upper"), os.path.join(layer, "work")
        os.mkdir(upper, 0o755)
        os.mkdir(work, 0o700)
        linux.mount("overlay", merged, "overlay", 0,
                    f"lowerdir={lower},upperdir={upper},workdir={work},{OPTIONS}")  # fmt: skip
    except OSError as exc:
        remove(cid)
        why = "; ".join(_kernel_says("overlayfs")) or exc.strerror
        raise SetupError(f"cannot mount the container's root: {why}", "/root/path") from exc
    return merged


def ephemeral(spec: dict) -> None:
    """Make each in-guest tmpfs the spec's mounts name (sources below GUEST_EPHEMERAL_DIR,
    put there by the host for CRI's /dev/shm and memory emptyDirs), once per VM: the pod's
    containers share it, as they share the host directory it stands for."""
    for i, m in enumerate(spec.get("mounts") or []):
        src = m.get("source") or ""
        if os.path.dirname(src) != GUEST_EPHEMERAL_DIR:
            continue
        os.makedirs(src, 0o1777, exist_ok=True)
        if os.path.ismount(src):
            continue
        try:
            linux.mount("tmpfs", src, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=1777")
        except OSError as exc:
            raise SetupError(f"cannot make the in-guest volume: {exc.strerror}",
                             f"/mounts/{i}/source") from exc  # fmt: skip


def remove(cid: str) -> None:
    for path in (os.path.join(ROOTS, cid), os.path.join(LAYERS, cid)):
        with contextlib.suppress(OSError):
            linux.umount2(path, linux.MNT_DETACH)
        with contextlib.suppress(OSError):
            os.rmdir(path)


def _kernel_says(prefix: str) -> list[str]:
    """The kernel log's last lines starting with ``prefix`` (overlayfs says why only there)."""
    out: list[str] = []
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return out
    try:
        while True:
            try:
                rec = os.read(fd, 8192).decode(errors="replace")
            except BlockingIOError:
                break
            except OSError:  # EPIPE: a record was overwritten; go on
                continue
            text = rec.split(";", 1)[-1].strip()
            if text.startswith(prefix):
                out.append(text)
    finally:
        os.close(fd)
    return out[-3:]
