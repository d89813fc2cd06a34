"""``ps`` and ``events``: a container's processes, and its resource stats and OOM kills."""

from __future__ import annotations

import json
import time

from agent import protocol as P
from hyperpy.errors import InvalidState
from hyperpy.monitor_client import MonitorClient
from hyperpy.sandbox.model import Status
from hyperpy.verbs import cgroup
from hyperpy.verbs.state import checked

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


def ps(root: str, cid: str, guest: bool = True) -> tuple[list[int], list[dict]]:
    """(host pids, guest processes) of a container.

    The host pids are the process proxies, one per container process hyperpy started
    (init and each exec): callers of ``ps --format json`` (containerd's Pids, docker
    top) look them up on the host, where the guest's own pids mean nothing.  The guest
    processes (pid, ppid, uid, state, cmd in the guest) are what the table shows; without
    ``guest`` (``--format json``, which prints only the host pids) the guest is not asked.
    """
    st, d, now = checked(root, cid, "ps")
    if now == Status.STOPPED:
        return [], []
    procs = MonitorClient(d, st).request(P.OP_PS, cid=cid).get("processes", []) if guest else []
    marker = f"hyperpy.proxy\0{d}\0".encode()
    host = []
    for pid in cgroup(st.host_cgroup).pids() if st.host_cgroup else [st.pid]:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker in f.read():
                    host.append(pid)
        except OSError:
            continue
    return host, procs


def stats(root: str, cid: str) -> dict:
    st, d, _ = checked(root, cid, "events")
    return MonitorClient(d, st).request(P.OP_STATS, cid=cid)


def events(root: str, cid: str, once: bool, period: float, emit: Callable[[str], None]) -> None:
    """runc's ``events``: a stats line (and an oom line for each new OOM kill) every
    ``period`` seconds, until the container stops; with ``once``, one stats line."""
    ooms = None
    while True:
        try:
            reply = stats(root, cid)
        except InvalidState:
            if once:
                raise
            return  # the container stopped: the stream ends, as runc's does
        if ooms is not None and reply.get("oom_kills", 0) > ooms:
            emit(json.dumps({"type": "oom", "id": cid}))
        ooms = reply.get("oom_kills", 0)
        emit(json.dumps({"type": "stats", "id": cid, "data": reply["stats"]}))
        if once:
            return
        time.sleep(period)
