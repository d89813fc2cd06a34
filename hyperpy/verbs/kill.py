"""``kill``: a signal to the container's init, or with ``--all`` to all its processes."""

from __future__ import annotations

from agent import protocol as P
from hyperpy.errors import HyperpyError
from hyperpy.monitor_client import MonitorClient
from hyperpy.sandbox import record
from hyperpy.sandbox.model import Status
from hyperpy.verbs import log
from hyperpy.verbs.state import checked


def kill(root: str, cid: str, sig: int, all_: bool = False) -> None:
    st, d, now = checked(root, cid, "kill-all" if all_ else "kill")
    if not all_:
        MonitorClient(d, st).request(P.OP_SIGNAL, cid=cid, proc=st.init_proc, signal=sig)
    elif now != Status.STOPPED:
        MonitorClient(d, st).request(P.OP_SIGNAL, cid=cid, all=True, signal=sig)
    elif record.pid_alive(*st.monitor):
        # As runc: --all on a stopped container succeeds.  Processes its init left in a
        # shared pid namespace get the signal while the VM still runs.
        try:
            MonitorClient(d, st, timeout=10).request(P.OP_SIGNAL, cid=cid, all=True, signal=sig)
        except HyperpyError as exc:
            log().debug("kill --all of stopped %s: %s", cid, exc)
