"""What an unprivileged QEMU may open of a pod: its view, ``/run/hyperpy/libvirt/NAME/``.

Owns that directory and the mounts in it, for the libvirt driver (``vm/libvirt.py``), whose
QEMU runs as libvirt's own user (``libvirt-qemu`` on Debian) without capabilities. The state
directory stays root-only (0700); QEMU gets instead:

- ``vmlinux``, ``initrd.img``: read-only bind mounts of the artifacts. libvirt's DAC driver
  chowns a domain's kernel and initrd to QEMU's user while it runs; on the artifacts
  themselves that would let a QEMU taken over by its guest rewrite the kernel of every
  later pod. On a read-only mount the chown fails with EROFS, which libvirt accepts;
- ``image/``, ``shared/``: recursive binds of the pod's two 9p exports (``share.py``), in
  their peer group, so a pod member's rootfs bound into an export later reaches them;
- ``agent.sock``: the agent channel, bound by libvirtd (root) in this directory, which is
  ``root:<QEMU's group>`` 0750: QEMU can read its view, never replace an entry of it.

``VIEW_ROOT`` is a mount point of its own with shared propagation, so that a libvirtd in
another mount namespace made as its slave (the tests' does) sees the views made later.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os

from hyperpy.errors import VMError

log = logging.getLogger(__name__)
AT_FDCWD = -100

VIEW_ROOT = "/run/hyperpy/libvirt"
FILES = ("vmlinux", "initrd.img")
AGENT_SOCKET = "agent.sock"
CONSOLE_SOCKET = "console.sock"  # the monitor listens, QEMU connects (vm/console.py)


def _hash(text: str, n: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def root_tag(root: str) -> str:
    """What the names of a ``--root``'s domains and views carry (tests find theirs by it)."""
    return _hash(os.path.abspath(root), 8)


def domain_name(state_dir: str) -> str:
    """The libvirt domain of the pod in ``state_dir``: ``hyperpy-<id>-<hash of the root>``,
    since an id is unique only under one ``--root``."""
    state_dir = os.path.abspath(state_dir)
    return f"hyperpy-{os.path.basename(state_dir)}-{root_tag(os.path.dirname(state_dir))}"


def view_name(state_dir: str) -> str:
    """The view's directory name: short (the agent socket's path must fit sun_path, and
    ids are up to 64 characters long), the root's tag first."""
    state_dir = os.path.abspath(state_dir)
    return f"{root_tag(os.path.dirname(state_dir))}-{_hash(state_dir, 12)}"


def remove_for(state_dir: str) -> bool:
    """Remove the view of the pod in ``state_dir`` if one is left (its monitor was killed);
    whether there was one."""
    v = View(view_name(state_dir))
    if not os.path.isdir(v.dir):
        return False
    v.remove()
    return True


def ensure_root(root: str = VIEW_ROOT) -> None:
    """Make ``root`` (0711) a mount point with a shared peer group of its own, once."""
    from agent import linux

    os.makedirs(root, 0o711, exist_ok=True)
    lock = os.open(os.path.dirname(root), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _is_mount_point(root):
            linux.mount(root, root, None, linux.MS_BIND)
            linux.mount(None, root, None, linux.MS_PRIVATE)
            linux.mount(None, root, None, linux.MS_SHARED)
    finally:
        os.close(lock)


def _is_mount_point(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def _bind_readonly(source: str, target: str) -> None:
    """A read-only bind of ``source`` on ``target``, read-only from the moment it is attached
    (a remount would not reach the copies propagated to a libvirtd in another namespace)."""
    from agent import linux
    from hyperpy.share import attach

    attrs = linux.MOUNT_ATTR_RDONLY | linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV
    attach(source, lambda: os.open(target, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC),
           attrs | linux.MOUNT_ATTR_NOEXEC)  # fmt: skip


class View:
    def __init__(self, name: str, root: str = VIEW_ROOT) -> None:
        self.dir = os.path.join(root, name)
        self.root = root

    def path(self, entry: str) -> str:
        return os.path.join(self.dir, entry)

    def make(self, kernel: str, initrd: str, exports: dict[str, str], gid: int) -> None:
        """The view of a pod: ``exports`` maps an entry name to a 9p export directory."""
        from agent import linux

        ensure_root(self.root)
        try:
            os.mkdir(self.dir, 0o700)
        except FileExistsError:
            log.warning("removing the stale libvirt view %s", self.dir)
            self.remove()
            os.mkdir(self.dir, 0o700)
        try:
            for entry, source in zip(FILES, (kernel, initrd), strict=True):
                target = self.path(entry)
                os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                _bind_readonly(source, target)
            for entry, source in exports.items():
                os.mkdir(self.path(entry), 0o755)
                linux.mount(source, self.path(entry), None, linux.MS_BIND | linux.MS_REC)
            os.chown(self.dir, 0, gid)
            os.chmod(self.dir, 0o750)
        except OSError as exc:
            self.remove()
            raise VMError(f"cannot make the pod's libvirt view {self.dir}: {exc}") from exc

    def remove(self) -> None:
        """Unmount and remove every entry, then the directory; what is gone is skipped."""
        from agent import linux

        try:
            entries = os.listdir(self.dir)
        except FileNotFoundError:
            return
        for entry in entries:
            target = self.path(entry)
            with contextlib.suppress(OSError):
                # a slave first: unmounting a peer of an export would unmount the
                # container binds below it in the export as well
                linux.mount(None, target, None, linux.MS_REC | linux.MS_SLAVE)
                linux.umount2(target, linux.MNT_DETACH)
            try:
                if os.path.isdir(target) and not os.path.islink(target):
                    os.rmdir(target)
                else:
                    os.unlink(target)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    log.warning("cannot remove %s: %s", target, exc)
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(self.dir)
