"""How a container's files reach a guest whose QEMU runs on this host: binds into the
pod's 9p exports (``share.py``). The qemu and libvirt drivers' VMs share it; the remote
driver copies instead (``vm/remote.py``)."""

from __future__ import annotations

from typing import Any


class LocalShare:
    """The share of the drivers whose QEMU is on this host: binds into the exports."""

    async def share(self, plan: Any, state_dir: str) -> None:
        from hyperpy import share

        share.apply(plan, state_dir)

    async def unshare(self, cid: str, state_dir: str) -> None:
        from hyperpy import share

        share.release(state_dir, cid)
