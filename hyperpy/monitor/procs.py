"""The pod's processes as the monitor knows them: one entry per process the agent started.

Owns, per process: the container it belongs to (what the host recorded when the agent
started it, never what a later frame says), its :class:`~hyperpy.agent_link.Attachment`
(its proxy, its kept output, its exit) and, for a container's init, the state dir whose
``exit.json`` records how it ended.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from hyperpy.agent_link import Attachment


@dataclass
class Process:
    cid: str
    attachment: Attachment
    exit_dir: str | None = None  # set on a container's init: its exit.json goes there

    @property
    def exited(self) -> bool:
        return self.attachment.exit is not None


class Processes:
    """Every process of the pod, by the agent's process number."""

    def __init__(self, flow: Callable[[int, bool], Awaitable[object]]) -> None:
        self._flow = flow  # pause or resume a process's output in the agent
        self._by_proc: dict[int, Process] = {}

    def add(self, proc: int, cid: str) -> None:
        """The agent started ``proc`` in container ``cid`` (AgentLink.on_new_proc)."""
        entry = self._by_proc.get(proc)
        if entry is not None:
            entry.cid = cid
            return
        att = Attachment(lambda pause: self._flow(proc, pause))
        self._by_proc[proc] = Process(cid, att)

    def get(self, proc: object) -> Process | None:
        return self._by_proc.get(proc) if isinstance(proc, int) else None

    def __contains__(self, proc: object) -> bool:
        return self.get(proc) is not None

    def __iter__(self) -> Iterator[int]:
        return iter(list(self._by_proc))

    def of(self, cid: str) -> list[int]:
        """The processes of container ``cid``."""
        return [p for p, e in self._by_proc.items() if e.cid == cid]

    def set_init(self, proc: int, exit_dir: str) -> None:
        """``proc`` is its container's init; its exit is recorded in ``exit_dir``."""
        entry = self._by_proc.get(proc)
        if entry is not None:
            entry.exit_dir = exit_dir

    def forget(self, procs: list[int]) -> None:
        for proc in procs:
            self._by_proc.pop(proc, None)

    def attachments(self) -> list[Attachment]:
        return [e.attachment for e in self._by_proc.values()]

    def all_exited(self) -> bool:
        """Whether a container was created here and every process of the pod has exited."""
        entries = self._by_proc.values()
        return any(e.exit_dir is not None for e in entries) and all(e.exited for e in entries)
