"""What a container's files look like to the guest: the sandbox's 9p-shared directory.

Owns turning a spec's host paths into guest paths (pure: :func:`plan`) and the host bind
mounts that make them real (:func:`apply`, undone by :func:`release`). The bundle's rootfs
is bound at ``shared/<cid>/rootfs`` and each bind mount's source at
``shared/<cid>/mounts/<n>``, so the guest sees exactly those paths and nothing else of the
host (after Kata 1.x's shared directory).
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass, field

from agent.protocol import GUEST_SHARE_DIR
from hyperpy import proc
from hyperpy.errors import SpecError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bind:
    source: str  # host path
    target: str  # relative to the shared directory
    is_dir: bool


@dataclass
class Plan:
    guest_spec: dict
    guest_rootfs: str
    binds: list[Bind] = field(default_factory=list)


def is_bind(mount: dict) -> bool:
    opts = mount.get("options") or []
    return mount.get("type") == "bind" or "bind" in opts or "rbind" in opts


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
        rel = f"{cid}/mounts/{i}"
        binds.append(Bind(host_src, rel, os.path.isdir(host_src)))
        m["source"] = f"{GUEST_SHARE_DIR}/{rel}"
    return Plan(guest, f"{cid}/rootfs", binds)


def apply(p: Plan, shared_dir: str) -> None:
    """Make the binds; on any failure undo those already made."""
    try:
        for b in p.binds:
            target = os.path.join(shared_dir, b.target)
            if b.is_dir:
                os.makedirs(target, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                open(target, "a").close()
            proc.run(["mount", "--rbind", b.source, target], timeout=30)
            proc.run(["mount", "--make-rslave", target], timeout=30)
    except BaseException:
        release(shared_dir)
        raise


def mounts_under(path: str) -> list[str]:
    """Mount points at or below ``path``, deepest first."""
    path = os.path.realpath(path)
    found = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                point = line.split()[4].encode().decode("unicode_escape")
                if point == path or point.startswith(path + "/"):
                    found.append(point)
    except OSError:
        return []
    return sorted(set(found), key=lambda p: (-p.count("/"), p))


def release(shared_dir: str) -> None:
    """Detach every mount below the shared directory (lazily: the guest may hold files)."""
    for point in mounts_under(shared_dir):
        try:
            proc.run(["umount", "-l", point], timeout=30)
        except Exception as exc:  # noqa: BLE001 - keep releasing the rest
            log.warning("cannot unmount %s: %s", point, exc)
