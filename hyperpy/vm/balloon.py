"""The virtio balloon over QMP: the direct and the remote drivers' memory resize.

``balloon`` sets the guest's target (QEMU keeps it in the device's config; the guest's
driver inflates or deflates towards it), ``query-balloon`` says where the guest is. The
libvirt driver asks libvirt for the same (``vm/libvirt.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from hyperpy.errors import VMError

log = logging.getLogger("hyperpy.vm")

MIB = 1 << 20
# The balloon moves at ~1 GiB/s under TCG here; a guest that stops moving it has done
# what it can (or will not: the pod's host ceiling is what holds it then).
TIMEOUT = 30.0
STALL = 1.0

Command = Callable[[str, dict | None], Awaitable[object]]


async def set_target(command: Command, memory_mb: int) -> None:
    await command("balloon", {"value": memory_mb * MIB})


async def actual(command: Command) -> int:
    """The guest's memory outside the balloon, MiB."""
    reply = await command("query-balloon", None)
    if not isinstance(reply, dict) or not isinstance(reply.get("actual"), int):
        raise VMError(f"QEMU's query-balloon said {reply!r:.80}")
    return int(reply["actual"]) // MIB


async def settle(actual_mb: Callable[[], Awaitable[int]], target: int,
                 timeout: float = TIMEOUT) -> int:  # fmt: skip
    """Wait for the guest's balloon to reach ``target`` MiB, or to stop moving (for
    ``STALL`` seconds) short of it; where it is then."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while True:
        now_mb = await actual_mb()
        if abs(now_mb - target) <= 1:
            return now_mb
        now = time.monotonic()
        if now_mb != last:
            last, since = now_mb, now
        elif now - since > STALL or now > deadline:
            log.warning("the balloon stopped at %d MiB, on its way to %d", now_mb, target)
            return now_mb
        await asyncio.sleep(0.02)
