"""What a container's files look like to the guest: the sandbox's two 9p exports.

Owns turning a spec's host paths into guest paths (pure: :func:`plan`), the exports' layout
on the host, and the bind mounts that make them real (:func:`prepare`, :func:`apply`, undone
by :func:`release`). After Kata 1.x's shared directory, hardened against the guest (Kata
CVE-2020-2026: a guest-planted symlink steered where the host mounted)::

    R/ID/image/   9p tag hyperpy-image, read-only, real owners, modes and symlinks
        <cid>/rootfs              the bundle's rootfs (bound read-only)
        <cid>/mounts/<n>/<base>   read-only bind sources, under their own base name
    R/ID/shared/  9p tag hyperpy, read-write, mapped-xattr: what the guest makes keeps its
                  owner, mode and type in QEMU's xattrs, never in the host's metadata
        <cid>/mounts/<n>/<base>   read-write bind sources
    R/ID/image-rw/, R/ID/share-rw/   the real directories behind the two exports

A read-write volume that is memory on the host and means nothing there (CRI's /dev/shm, a
Kubernetes memory emptyDir) is not exported: the guest makes a tmpfs for it, shared by the
pod's containers (``agent/layers.py``).
    R/ID/share.json               what was made and mounted, written before each step

The guest writes a container's root in memory (``agent/layers.py``: the image is never
written). Each export is a read-only bind of its real directory (shared propagation, so
QEMU's jail sees later mounts): the guest can write only inside read-write volumes, never
in the structure around them, so it cannot plant an entry where the host will build. The
host still resolves every path below an export with openat2(RESOLVE_BENEATH |
RESOLVE_NO_SYMLINKS), makes each entry fresh (an existing one is refused), mounts with
open_tree/move_mount on file descriptors after checking what the source is, and releases
only what share.json records, deepest first, removing entries one by one, never
recursively.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import hashlib
import json
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from agent import linux
from agent.protocol import GUEST_EPHEMERAL_DIR, GUEST_IMAGE_DIR, GUEST_SHARE_DIR
from hyperpy.errors import SpecError, VMError
from hyperpy.sandbox import record
from hyperpy.sandbox.record import mounts_below, write_json_atomic

log = logging.getLogger(__name__)

IMAGE, SHARED = "image", "shared"  # the exports
REAL = {IMAGE: "image-rw", SHARED: "share-rw"}
GUEST = {IMAGE: GUEST_IMAGE_DIR, SHARED: GUEST_SHARE_DIR}
RECORD = record.SHARE
AT_FDCWD = -100
_STRICT = linux.RESOLVE_BENEATH | linux.RESOLVE_NO_SYMLINKS | linux.RESOLVE_NO_MAGICLINKS


@dataclass(frozen=True)
class Bind:
    source: str  # host path
    target: str  # relative to its export
    is_dir: bool
    readonly: bool = False
    export: str = SHARED
    recursive: bool = True  # rbind (submounts come along) or bind (they do not), as runc
    readonly_all: bool = False  # rro: the submounts are made read-only too


@dataclass
class Plan:
    cid: str
    guest_spec: dict
    guest_rootfs: str  # below the image share
    binds: list[Bind] = field(default_factory=list)


def is_bind(mount: dict) -> bool:
    opts = mount.get("options") or []
    return mount.get("type") == "bind" or "bind" in opts or "rbind" in opts


def _base_name(path: str) -> str:
    name = os.path.basename(os.path.normpath(path))
    return name if name not in ("", ".", "..", "/") else "source"


def plan(spec: dict, bundle: str, cid: str, faithful: bool = False) -> Plan:
    """The guest's view of ``spec`` and the host binds it needs. No I/O but stat (and an
    xattr probe of read-write sources): a source that cannot be shared fails here, before
    a VM boots. ``faithful`` (``[vm] files``): the root and read-write volumes are written
    through on the image export (9p passthrough), not kept in the guest or in xattrs."""
    guest = copy.deepcopy(spec)
    root = spec.get("root", {}).get("path", "rootfs")
    host_root = root if os.path.isabs(root) else os.path.join(bundle, root)
    # faithful: read-write even with root.readonly, which the guest applies after making
    # the mount points, as runc does
    binds = [Bind(host_root, f"{cid}/rootfs", True, not faithful, IMAGE)]
    for i, m in enumerate(guest.get("mounts", [])):
        if not is_bind(m):
            continue
        src = m.get("source", "")
        host_src = src if os.path.isabs(src) else os.path.join(bundle, src)
        if not os.path.exists(host_src):
            raise SpecError(
                f"bind mount source {src!r} does not exist on the host; create it or fix "
                "the mount",
                pointer=f"/mounts/{i}/source",
            )
        opts = m.get("options") or []
        modes = [o for o in opts if o in ("ro", "rw")]
        readonly_all = "rro" in opts  # runc's recursive read-only (mount_setattr)
        readonly = readonly_all or (bool(modes) and modes[-1] == "ro")  # the last one wins
        if not readonly and _stays_in_guest(m, host_src):
            key = hashlib.sha256(os.path.realpath(host_src).encode()).hexdigest()[:16]
            m["source"] = f"{GUEST_EPHEMERAL_DIR}/{key}"
            continue
        recursive = "rbind" in opts
        if faithful and readonly:
            m["options"] = _guest_options(opts, host_src, recursive and not readonly_all)
        elif not readonly and not faithful and not xattrs_supported(host_src):
            # 9p's mapped-xattr model keeps the guest's owners in user xattrs
            raise SpecError(
                f"read-write bind source {src!r} is on a filesystem without user xattrs, "
                "where the guest's file owners are kept: mount it read-only, or use a volume "
                "on ext4, xfs or btrfs (tmpfs has them only since Linux 6.6)",
                pointer=f"/mounts/{i}/source",
            )
        # The index keeps entries apart; the base name keeps the guest's mountinfo true to
        # the source (its root field ends in the source's name, as with runc).
        rel = f"{cid}/mounts/{i}/{_base_name(host_src)}"
        export = IMAGE if readonly or faithful else SHARED
        binds.append(Bind(host_src, rel, os.path.isdir(host_src), readonly, export, recursive,
                          readonly_all))  # fmt: skip
        m["source"] = f"{GUEST[export]}/{rel}"
    return Plan(cid, guest, f"{cid}/rootfs", binds)


def _guest_options(opts: list[str], host_src: str, submounts_rw: bool) -> list[str]:
    """A read-only bind's options as the guest applies them. Its submounts on the host are
    one 9p mount in the guest: a guest ``ro`` would make all of them read-only, so when a
    non-recursive ``ro`` bind has submounts (which runc leaves as they are), the host alone
    makes the bind's own mount read-only and the guest mounts it read-write."""
    out = ["ro" if o == "rro" else o for o in opts]
    real = os.path.realpath(host_src)
    if submounts_rw and any(p != real for p in mounts_below(real)):
        out = [o for o in out if o != "ro"]
    return out


def _on_tmpfs(path: str) -> bool:
    """Whether ``path`` is on a tmpfs, by its device in the kernel's mount table."""
    try:
        dev = os.stat(path).st_dev
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                sep = fields.index("-")
                major, minor = fields[2].split(":")
                if fields[sep + 1] == "tmpfs" and os.makedev(int(major), int(minor)) == dev:
                    return True
    except (OSError, ValueError, IndexError):
        pass
    return False


def _stays_in_guest(mount: dict, host_src: str) -> bool:
    """A read-write, memory-backed volume that means nothing on the host (CRI's /dev/shm, a
    Kubernetes memory emptyDir) becomes a tmpfs in the guest, as Kata does: its files need
    no host metadata (tmpfs has user xattrs only since Linux 6.6)."""
    if not os.path.isdir(host_src) or not _on_tmpfs(host_src):
        return False
    return mount.get("destination") == "/dev/shm" or "kubernetes.io~empty-dir" in host_src


def xattrs_supported(path: str) -> bool:
    try:
        os.getxattr(path, "user.hyperpy.probe")
    except OSError as exc:
        return exc.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP)
    return True


# --- the record -------------------------------------------------------------------------
def _load(state_dir: str) -> dict:
    try:
        with open(os.path.join(state_dir, RECORD)) as f:
            return json.load(f)
    except FileNotFoundError:
        return {"exports": [], "containers": {}}
    except ValueError as exc:
        raise VMError(f"{os.path.join(state_dir, RECORD)} is garbled: {exc}") from exc


def _save(state_dir: str, rec: dict) -> None:
    write_json_atomic(os.path.join(state_dir, RECORD), rec)


# --- host side --------------------------------------------------------------------------
def prepare(state_dir: str) -> dict[str, str]:
    """Make both exports (before QEMU starts); returns export name -> host path."""
    rec = {"exports": [IMAGE, SHARED], "containers": {}}
    _save(state_dir, rec)
    out = {}
    for export in (IMAGE, SHARED):
        real, path = os.path.join(state_dir, REAL[export]), os.path.join(state_dir, export)
        os.mkdir(real, 0o755)
        os.mkdir(path, 0o755)
        # Paths made just now in the root-only state dir, before any guest exists.
        linux.mount(real, path, None, linux.MS_BIND)
        ro = linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC
        linux.mount(None, path, None, linux.MS_REMOUNT | linux.MS_BIND | ro)
        # A peer group of its own (not the parent's, e.g. /run's), shared with QEMU's jail.
        linux.mount(None, path, None, linux.MS_PRIVATE)
        linux.mount(None, path, None, linux.MS_SHARED)
        out[export] = path
    return out


def _open_dir(root_fd: int, rel: str) -> int:
    """An O_PATH fd of directory ``rel`` below ``root_fd``: no symlink, no other mount."""
    if rel in ("", "."):
        return os.dup(root_fd)
    return linux.openat2(
        root_fd, rel, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, _STRICT | linux.RESOLVE_NO_XDEV
    )


def _make(real_fd: int, rel: str, is_dir: bool) -> None:
    """Create ``rel`` fresh (its parent must exist); an existing entry is an error."""
    parent, name = os.path.split(rel)
    pfd = _open_dir(real_fd, parent)
    try:
        if is_dir:
            os.mkdir(name, 0o755, dir_fd=pfd)
        else:
            os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_WRONLY,
                             0o644, dir_fd=pfd))  # fmt: skip
    finally:
        os.close(pfd)


def attach(source: str, open_target: Callable[[], int], attrs: int, *, recursive: bool = False,
           top_attrs: int = 0, propagation: int = linux.MS_PRIVATE,
           check: Callable[[int], None] | None = None) -> None:  # fmt: skip
    """Bind ``source`` (a clone of its mount, of its tree with ``recursive``) on the file
    descriptor ``open_target()`` returns, on file descriptors only: ``attrs`` on every mount
    of the clone and ``top_attrs`` on its own, set before it is attached, so it is never
    seen without them; ``check`` sees the clone first. The one fd-mount sequence of the
    share's binds and of libvirt's view (``vm/view.py``)."""
    rec = linux.AT_RECURSIVE if recursive else 0
    tree = linux.open_tree(AT_FDCWD, source, linux.OPEN_TREE_CLONE | linux.OPEN_TREE_CLOEXEC | rec)
    try:
        if check is not None:
            check(tree)
        linux.mount_setattr(tree, linux.AT_RECURSIVE, attrs, propagation)
        if top_attrs:
            linux.mount_setattr(tree, 0, top_attrs)
        target = open_target()
        try:
            flags = linux.MOVE_MOUNT_F_EMPTY_PATH | linux.MOVE_MOUNT_T_EMPTY_PATH
            linux.move_mount(tree, target, flags, f"{source} on fd {target}")
        finally:
            os.close(target)
    finally:
        os.close(tree)


def _bind(export_fd: int, b: Bind) -> None:
    """Mount ``b.source`` on its entry: the source is what the plan saw (a directory or
    not), the target is resolved without links beneath the export."""

    def same_type(tree: int) -> None:
        if stat.S_ISDIR(os.fstat(tree).st_mode) != b.is_dir:
            raise VMError(f"bind source {b.source} changed type since create checked it")

    def entry() -> int:
        target = linux.openat2(
            export_fd, b.target, os.O_PATH | os.O_NOFOLLOW, _STRICT | linux.RESOLVE_NO_XDEV
        )
        mode = os.fstat(target).st_mode  # O_PATH|O_NOFOLLOW: a link is seen as one
        if not (stat.S_ISDIR(mode) if b.is_dir else stat.S_ISREG(mode)):
            os.close(target)
            raise VMError(
                f"share entry {b.target} is not the {'directory' if b.is_dir else 'file'} "
                "hyperpy made: refusing to mount on it"
            )
        return target

    # nodev everywhere: no device node below an export is ever opened on the host
    attrs = linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV
    if b.readonly and b.readonly_all:
        attrs |= linux.MOUNT_ATTR_RDONLY
    top = linux.MOUNT_ATTR_RDONLY if b.readonly and not b.readonly_all else 0  # runc's ro
    attach(b.source, entry, attrs, recursive=b.recursive, top_attrs=top,
           propagation=linux.MS_SLAVE, check=same_type)  # fmt: skip


class _Fds:
    """O_PATH fds of each export and of its real directory, closed on exit."""

    def __init__(self, state_dir: str) -> None:
        self.export: dict[str, int] = {}
        self.real: dict[str, int] = {}
        flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW
        try:
            for e in (IMAGE, SHARED):
                self.export[e] = os.open(os.path.join(state_dir, e), flags)
                self.real[e] = os.open(os.path.join(state_dir, REAL[e]), flags)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for fd in (*self.export.values(), *self.real.values()):
            os.close(fd)
        self.export.clear()
        self.real.clear()


def apply(p: Plan, state_dir: str) -> None:
    """Make one container's entries and binds; on failure undo them."""
    cid = p.cid
    rec = _load(state_dir)
    if not rec.get("exports"):
        raise VMError(f"the sandbox's shares in {state_dir} were not prepared")
    if cid in rec["containers"]:
        raise VMError(f"container {cid!r} already has files in this sandbox's share")
    entry: dict = {"made": [], "mounts": []}
    rec["containers"][cid] = entry
    try:
        fds = _Fds(state_dir)
    except OSError as exc:
        raise VMError(f"the sandbox's shares in {state_dir} are gone: {exc}") from exc
    try:
        for b in p.binds:
            parts = b.target.split("/")
            wanted = [("/".join(parts[:i]), True) for i in range(1, len(parts))]
            for rel, is_dir in (*wanted, (b.target, b.is_dir)):
                if [b.export, rel] in entry["made"]:
                    continue
                entry["made"].append([b.export, rel])
                _save(state_dir, rec)
                try:
                    _make(fds.real[b.export], rel, is_dir)
                except FileExistsError:
                    entry["made"].remove([b.export, rel])
                    _save(state_dir, rec)
                    raise VMError(
                        f"{os.path.join(state_dir, REAL[b.export], rel)} exists already: the "
                        f"share entries of container {cid!r} must be new (delete the old "
                        "container first)"
                    ) from None
        for b in p.binds:
            entry["mounts"].append([b.export, b.target])
            _save(state_dir, rec)
            _bind(fds.export[b.export], b)
    except BaseException:
        fds.close()
        release(state_dir, cid)
        raise
    fds.close()


def _umount_entry(export_fd: int, rel: str) -> None:
    try:
        fd = linux.openat2(export_fd, rel, os.O_PATH | os.O_NOFOLLOW, _STRICT)
    except FileNotFoundError:
        return
    try:
        # The fd is the root of the mount on the entry (if any): detach exactly that one.
        linux.umount2(f"/proc/self/fd/{fd}", linux.MNT_DETACH)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: nothing mounted there
            raise
    finally:
        os.close(fd)


def _remove_entry(real_fd: int, rel: str) -> None:
    parent, name = os.path.split(rel)
    try:
        pfd = _open_dir(real_fd, parent)
    except FileNotFoundError:
        return
    try:
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            os.rmdir(name, dir_fd=pfd)
        else:
            os.unlink(name, dir_fd=pfd)
    except FileNotFoundError:
        pass
    finally:
        os.close(pfd)


def _release_one(state_dir: str, fds: _Fds, entry: dict) -> bool:
    ok = True
    for export, rel in reversed(entry["mounts"]):
        try:
            _umount_entry(fds.export[export], rel)
        except OSError as exc:
            ok = False
            log.warning("cannot unmount %s/%s/%s: %s", state_dir, export, rel, exc)
    for export, rel in reversed(entry["made"]):
        try:
            _remove_entry(fds.real[export], rel)
        except OSError as exc:
            ok = False
            log.warning("cannot remove %s/%s/%s: %s", state_dir, REAL[export], rel, exc)
    return ok


def release(state_dir: str, cid: str | None = None) -> None:
    """Unmount and remove what the record says was made for ``cid`` (all when None)."""
    try:
        rec = _load(state_dir)
    except VMError as exc:
        log.warning("%s; releasing what the mount table shows", exc)
        rec = {"exports": [IMAGE, SHARED], "containers": {}}
        for export in (IMAGE, SHARED):
            for point in mounts_below(os.path.join(state_dir, export)):
                with contextlib.suppress(OSError):
                    linux.umount2(point, linux.MNT_DETACH | linux.UMOUNT_NOFOLLOW)
    if not rec.get("exports"):
        return
    try:
        fds = _Fds(state_dir)
    except OSError:
        fds = None
    try:
        for c in [cid] if cid is not None else list(rec["containers"]):
            entry = rec["containers"].get(c)
            if entry is not None and fds is not None and _release_one(state_dir, fds, entry):
                del rec["containers"][c]
                _save(state_dir, rec)
    finally:
        if fds is not None:
            fds.close()
    if cid is not None or rec["containers"]:
        return
    for export in (IMAGE, SHARED):
        path = os.path.join(state_dir, export)
        with contextlib.suppress(OSError):
            if mounts_below(path) == [os.path.realpath(path)]:
                linux.umount2(path, linux.MNT_DETACH | linux.UMOUNT_NOFOLLOW)
    for name in (IMAGE, SHARED, REAL[IMAGE], REAL[SHARED]):
        try:
            os.rmdir(os.path.join(state_dir, name))
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove %s: %s", os.path.join(state_dir, name), exc)
            return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(state_dir, RECORD))
