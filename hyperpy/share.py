"""What a container's files look like to the guest: the sandbox's 9p-shared directory.

Owns turning a spec's host paths into guest paths (pure: :func:`plan`), the export's layout
on the host, and the bind mounts that make it real (:func:`prepare`, :func:`apply`, undone by
:func:`release`). After Kata 1.x's shared directory, hardened against the guest (Kata
CVE-2020-2026: a guest-planted symlink steered where the host mounted):

    R/ID/share-rw/               the real directory; only the host writes here
    R/ID/shared/                 the 9p export: a read-only bind of share-rw (shared
                                 propagation, so QEMU's jail sees later mounts)
        <cid>/rootfs             mount point: the bundle's rootfs
        <cid>/mounts/<n>/<base>  mount point: bind source n, under its own base name
    R/ID/share.json              what was made and mounted, written before each step

The guest can write only inside the mounted rootfs and volumes, never in the structure
around them: it cannot plant an entry where the host will build. The host still resolves
every path in the share with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), makes each
entry fresh (an existing one is refused), mounts with open_tree/move_mount on file
descriptors after checking what the source is, and releases only what share.json records,
deepest first, removing entries one by one (never recursively).
"""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import logging
import os
import stat
from dataclasses import dataclass, field

from agent import linux
from agent.protocol import GUEST_SHARE_DIR
from hyperpy.errors import SpecError, VMError
from hyperpy.sandbox.store import mounts_below, write_json_atomic

log = logging.getLogger(__name__)

RW_DIR = "share-rw"
EXPORT_DIR = "shared"
RECORD = "share.json"
AT_FDCWD = -100
_STRICT = linux.RESOLVE_BENEATH | linux.RESOLVE_NO_SYMLINKS | linux.RESOLVE_NO_MAGICLINKS


@dataclass(frozen=True)
class Bind:
    source: str  # host path
    target: str  # relative to the shared directory
    is_dir: bool
    readonly: bool = False


@dataclass
class Plan:
    guest_spec: dict
    guest_rootfs: str
    binds: list[Bind] = field(default_factory=list)


def is_bind(mount: dict) -> bool:
    opts = mount.get("options") or []
    return mount.get("type") == "bind" or "bind" in opts or "rbind" in opts


def _base_name(path: str) -> str:
    name = os.path.basename(os.path.normpath(path))
    return name if name not in ("", ".", "..", "/") else "source"


def plan(spec: dict, bundle: str, cid: str) -> Plan:
    """The guest's view of ``spec`` and the host binds it needs. No I/O but stat."""
    guest = copy.deepcopy(spec)
    root = spec.get("root", {}).get("path", "rootfs")
    host_root = root if os.path.isabs(root) else os.path.join(bundle, root)
    binds = [Bind(host_root, f"{cid}/rootfs", True)]
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
        # The index keeps entries apart; the base name keeps the guest's mountinfo true to
        # the source (its root field ends in the source's name, as with runc).
        rel = f"{cid}/mounts/{i}/{_base_name(host_src)}"
        readonly = "ro" in (m.get("options") or [])
        binds.append(Bind(host_src, rel, os.path.isdir(host_src), readonly))
        m["source"] = f"{GUEST_SHARE_DIR}/{rel}"
    return Plan(guest, f"{cid}/rootfs", binds)


def security_model(rootfs: str) -> str:
    """9p's model for a share holding ``rootfs``: ``mapped-xattr`` keeps the guest's owners
    and modes in user.virtfs.* xattrs (never in the host's real metadata); a filesystem
    without user xattrs (tmpfs before Linux 6.6) gets ``mapped-file`` (.virtfs_metadata)."""
    try:
        os.getxattr(rootfs, "user.hyperpy.probe")
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):
            return "mapped-file"
    return "mapped-xattr"


# --- the record -------------------------------------------------------------------------
def _load(state_dir: str) -> dict:
    try:
        with open(os.path.join(state_dir, RECORD)) as f:
            rec = json.load(f)
    except FileNotFoundError:
        return {"export": False, "containers": {}}
    except ValueError as exc:
        raise VMError(f"{os.path.join(state_dir, RECORD)} is garbled: {exc}") from exc
    return rec


def _save(state_dir: str, rec: dict) -> None:
    write_json_atomic(os.path.join(state_dir, RECORD), rec)


# --- host side --------------------------------------------------------------------------
def prepare(state_dir: str) -> str:
    """Make the export (before QEMU starts); returns its path."""
    rw, export = os.path.join(state_dir, RW_DIR), os.path.join(state_dir, EXPORT_DIR)
    _save(state_dir, {"export": True, "containers": {}})
    os.mkdir(rw, 0o755)
    os.mkdir(export, 0o755)
    # Paths made just now in the root-only state dir, before any guest exists.
    linux.mount(rw, export, None, linux.MS_BIND)
    ro = linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC
    linux.mount(None, export, None, linux.MS_REMOUNT | linux.MS_BIND | ro)
    linux.mount(None, export, None, linux.MS_SHARED)
    return export


def _open_dir(root_fd: int, rel: str) -> int:
    """An O_PATH fd of directory ``rel`` below ``root_fd``: no symlink, no other mount."""
    if rel in ("", "."):
        return os.dup(root_fd)
    return linux.openat2(
        root_fd, rel, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, _STRICT | linux.RESOLVE_NO_XDEV
    )


def _make(rw_fd: int, rel: str, is_dir: bool) -> None:
    """Create ``rel`` fresh (its parent must exist); an existing entry is an error."""
    parent, name = os.path.split(rel)
    pfd = _open_dir(rw_fd, parent)
    try:
        if is_dir:
            os.mkdir(name, 0o755, dir_fd=pfd)
        else:
            os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_WRONLY,
                             0o644, dir_fd=pfd))  # fmt: skip
    finally:
        os.close(pfd)


def _bind(export_fd: int, b: Bind) -> None:
    """Mount ``b.source`` on its entry, on file descriptors: the source is what the plan saw
    (a directory or not), the target is resolved without links beneath the export."""
    tree = linux.open_tree(
        AT_FDCWD, b.source, linux.OPEN_TREE_CLONE | linux.OPEN_TREE_CLOEXEC | linux.AT_RECURSIVE
    )
    try:
        if stat.S_ISDIR(os.fstat(tree).st_mode) != b.is_dir:
            raise VMError(f"bind source {b.source} changed type since create checked it")
        attrs = linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV
        if b.readonly:
            attrs |= linux.MOUNT_ATTR_RDONLY
        linux.mount_setattr(tree, linux.AT_RECURSIVE, attrs, linux.MS_SLAVE)
        target = linux.openat2(
            export_fd, b.target, os.O_PATH | os.O_NOFOLLOW, _STRICT | linux.RESOLVE_NO_XDEV
        )
        try:
            mode = os.fstat(target).st_mode  # O_PATH|O_NOFOLLOW: a link is seen as one
            if not (stat.S_ISDIR(mode) if b.is_dir else stat.S_ISREG(mode)):
                raise VMError(
                    f"share entry {b.target} is not the {'directory' if b.is_dir else 'file'} "
                    "hyperpy made: refusing to mount on it"
                )
            flags = linux.MOVE_MOUNT_F_EMPTY_PATH | linux.MOVE_MOUNT_T_EMPTY_PATH
            linux.move_mount(tree, target, flags, f"{b.source} on {b.target}")
        finally:
            os.close(target)
    finally:
        os.close(tree)


def apply(p: Plan, state_dir: str) -> None:
    """Make one container's entries and binds; on any failure undo what was made."""
    cid = p.guest_rootfs.split("/", 1)[0]
    rec = _load(state_dir)
    if not rec.get("export"):
        raise VMError(f"the sandbox's share in {state_dir} was not prepared")
    if cid in rec["containers"]:
        raise VMError(f"container {cid!r} already has files in this sandbox's share")
    entry: dict[str, list[str]] = {"made": [], "mounts": []}
    rec["containers"][cid] = entry
    rw_fd = os.open(os.path.join(state_dir, RW_DIR), os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
    export_fd = os.open(
        os.path.join(state_dir, EXPORT_DIR), os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW
    )
    try:
        wanted: list[tuple[str, bool]] = []
        for b in p.binds:
            parts = b.target.split("/")
            for i in range(1, len(parts)):
                wanted.append(("/".join(parts[:i]), True))
            wanted.append((b.target, b.is_dir))
        for rel, is_dir in wanted:
            if rel in entry["made"]:
                continue
            entry["made"].append(rel)
            _save(state_dir, rec)
            try:
                _make(rw_fd, rel, is_dir)
            except FileExistsError:
                entry["made"].remove(rel)
                _save(state_dir, rec)
                raise VMError(
                    f"{os.path.join(state_dir, RW_DIR, rel)} exists already: the share entry "
                    f"of container {cid!r} must be new (delete the old container first)"
                ) from None
        for b in p.binds:
            entry["mounts"].append(b.target)
            _save(state_dir, rec)
            _bind(export_fd, b)
    except BaseException:
        os.close(rw_fd)
        os.close(export_fd)
        release(state_dir, cid)
        raise
    os.close(rw_fd)
    os.close(export_fd)


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


def _remove_entry(rw_fd: int, rel: str) -> None:
    parent, name = os.path.split(rel)
    try:
        pfd = _open_dir(rw_fd, parent)
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


def release(state_dir: str, cid: str | None = None) -> None:
    """Unmount and remove what the record says was made for ``cid`` (all when None)."""
    try:
        rec = _load(state_dir)
    except VMError as exc:
        log.warning("%s; releasing what the mount table shows", exc)
        rec = {"export": True, "containers": {}}
        for point in mounts_below(os.path.join(state_dir, EXPORT_DIR)):
            with contextlib.suppress(OSError):
                linux.umount2(point, linux.MNT_DETACH | linux.UMOUNT_NOFOLLOW)
    rw, export = os.path.join(state_dir, RW_DIR), os.path.join(state_dir, EXPORT_DIR)
    cids = [cid] if cid is not None else list(rec["containers"])
    try:
        export_fd = os.open(export, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
        rw_fd = os.open(rw, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        export_fd = rw_fd = -1
    try:
        for c in cids:
            entry = rec["containers"].get(c)
            if entry is None:
                continue
            failed = False
            if export_fd >= 0:
                for rel in reversed(entry["mounts"]):
                    try:
                        _umount_entry(export_fd, rel)
                    except OSError as exc:
                        failed = True
                        log.warning("cannot unmount %s/%s: %s", export, rel, exc)
                for rel in reversed(entry["made"]):
                    try:
                        _remove_entry(rw_fd, rel)
                    except OSError as exc:
                        failed = True
                        log.warning("cannot remove %s/%s: %s", rw, rel, exc)
            if not failed:
                del rec["containers"][c]
                _save(state_dir, rec)
    finally:
        for fd in (export_fd, rw_fd):
            if fd >= 0:
                os.close(fd)
    if cid is not None or rec["containers"] or not rec.get("export"):
        return
    with contextlib.suppress(FileNotFoundError, OSError):
        if mounts_below(export) == [os.path.realpath(export)]:
            linux.umount2(export, linux.MNT_DETACH | linux.UMOUNT_NOFOLLOW)
    for path in (export, rw):
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove %s: %s", path, exc)
            return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(state_dir, RECORD))
