"""``pause``, ``resume`` and ``update``: the container's cgroup in the guest (its freezer,
its limits) and, for CPU limits, the pod's cgroup on the host where the vCPUs run."""

from __future__ import annotations

from agent import protocol as P
from hyperpy.monitor_client import MonitorClient
from hyperpy.sandbox import model, record
from hyperpy.verbs import cgroup
from hyperpy.verbs.state import checked


def pause(root: str, cid: str, resume: bool = False) -> None:
    op = "resume" if resume else "pause"
    with record.Lock(root, cid):
        st, d, _ = checked(root, cid, op)
        # The guest's cgroup freezer, as runc: the VM keeps running, so exec, update,
        # ps and stats still work on a paused container.
        MonitorClient(d, st).request(P.OP_FREEZE, cid=cid, freeze=not resume)
        st.status = model.AFTER[op].value
        record.save(root, st)


def update(root: str, cid: str, resources: dict) -> None:
    """Apply ``resources`` (LinuxResources: :func:`hyperpy.verbs.flags.update_resources`)."""
    with record.Lock(root, cid):
        st, d, _ = checked(root, cid, "update")
        from hyperpy import preflight

        preflight.update_resources(resources)
        MonitorClient(d, st).request(P.OP_UPDATE, cid=cid, resources=resources)
        if resources.get("cpu") and st.host_cgroup and not st.sandbox:
            cgroup(st.host_cgroup).set_cpu(resources["cpu"])  # where the VM's vCPUs run


def read_document(arg: str) -> dict:
    """``update --resources``' LinuxResources document: a file, or stdin for ``-``."""
    import sys

    from hyperpy.errors import UsageError
    from hyperpy.oci import document

    try:
        if arg == "-":
            res = document.parse(document.read_stream(sys.stdin.buffer))
        else:
            res = document.load(arg)
    except document.DocumentError as exc:
        raise UsageError(f"--resources {arg}: {exc}") from None
    if not isinstance(res, dict):
        raise UsageError(f"--resources {arg}: expected a JSON object")
    return res
