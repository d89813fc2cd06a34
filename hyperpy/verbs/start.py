"""``start``: the created container's process is let go (the agent's start gate opens)."""

from __future__ import annotations

from hyperpy.monitor_client import MonitorClient
from hyperpy.sandbox import record
from hyperpy.sandbox.model import Status
from hyperpy.verbs.state import checked, run_hooks


def start(root: str, cid: str) -> None:
    with record.Lock(root, cid):
        st, d, _ = checked(root, cid, "start")
        run_hooks(st, "startContainer", Status.CREATED)
        MonitorClient(d, st).request("start", cid=cid)
        st.status = Status.RUNNING.value
        record.save(root, st)
        run_hooks(st, "poststart", Status.RUNNING)
