"""How a VM that the monitor does not parent ends: a future set once, with why.

The libvirt and remote drivers learn of their VM's end from another thread (libvirt's
events, an SSH channel's exit status) and resolve :attr:`Ending.stopped` through the loop;
the direct driver has QEMU's own process to wait on and does not need this.
"""

from __future__ import annotations

import asyncio
import contextlib


class Ending:
    """``exited()``, ``wait_exit()`` and ``ended()`` of the hypervisor interface over one
    future, made by :meth:`_begin` in the monitor's loop and set by :meth:`_set_stopped`."""

    stopped: asyncio.Future[str] | None = None

    def _begin(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        self.stopped = loop.create_future()
        return loop

    def _set_stopped(self, why: str) -> None:
        if self.stopped is not None and not self.stopped.done():
            self.stopped.set_result(why)

    def exited(self) -> str | None:
        """Why the VM is gone, or None while it runs."""
        return self.stopped.result() if self.stopped is not None and self.stopped.done() else None

    async def wait_exit(self, timeout: float) -> None:
        if self.stopped is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.stopped), timeout)

    async def ended(self) -> str:
        assert self.stopped is not None
        return await asyncio.shield(self.stopped)
