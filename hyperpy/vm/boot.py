"""Watching a guest boot, for every driver: ready when the agent answers, a failure at once
when the console shows a kernel panic or the VM ends, a timeout otherwise."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from hyperpy.errors import BootTimeout, KernelPanic
from hyperpy.vm.console import scan_for_panic


async def watch_boot(vm: Any, ready: asyncio.Future, timeout: float) -> None:
    """Wait for ``ready`` while failing fast on a panic on ``vm``'s console or on the VM
    ending (either driver: ``vm`` has ``exited()``, ``wait_exit()``, ``console_path`` and
    ``failure()``)."""
    deadline = time.monotonic() + timeout
    pos = 0
    while not ready.done():
        gone = vm.exited()
        pos, panicked = scan_for_panic(vm.console_path, pos)
        if panicked:
            raise vm.failure("the guest kernel panicked during boot", KernelPanic)
        if gone is not None:
            raise vm.failure(f"the VM ended during boot ({gone})")
        if time.monotonic() > deadline:
            raise vm.failure(f"the guest agent did not answer within {timeout:.0f}s", BootTimeout)
        await asyncio.wait({ready}, timeout=0.05)
    if ready.exception() is not None:
        # The channel failing during boot usually means the VM went away (a panic reboots
        # it, and -no-reboot ends it): say why from the console rather than the socket.
        await vm.wait_exit(2.0)
        if scan_for_panic(vm.console_path, 0)[1]:
            raise vm.failure("the guest kernel panicked during boot", KernelPanic)
        gone = vm.exited()
        if gone is not None:
            raise vm.failure(f"the VM ended during boot ({gone})")
