"""What a caller sees of a container: its status, ``state``, ``list``, and the hooks' state.

The stored status is what the last verb set; :func:`status` adds what the state directory
and the process table say (init exited, the monitor gone: stopped), through the lifecycle
table (:mod:`hyperpy.sandbox.model`). :func:`checked` is every verb's first step.
"""

from __future__ import annotations

import os

from hyperpy.errors import ContainerNotFound
from hyperpy.sandbox import model, record
from hyperpy.sandbox.model import Status
from hyperpy.sandbox.record import State

OCI_VERSION = "1.1.0"


def status(d: str, st: State) -> Status:
    """The status of ``st`` (whose state directory is ``d``) as a caller sees it."""
    exited = os.path.exists(os.path.join(d, record.EXIT))
    return model.effective_status(Status(st.status), exited, record.pid_alive(*st.monitor))


def checked(root: str, cid: str, op: str) -> tuple[State, str, Status]:
    """The record of ``cid``, its state directory and its status, once ``op`` is allowed
    in that status (else runc's refusal: :func:`hyperpy.sandbox.model.check`)."""
    st = record.load(root, cid)
    d = record.state_dir(root, cid)
    now = status(d, st)
    model.check(op, now, cid)
    return st, d, now


def state(root: str, cid: str) -> dict:
    st = record.load(root, cid)
    d = record.state_dir(root, cid)
    now = status(d, st)
    out = {
        "ociVersion": OCI_VERSION,
        "id": st.id,
        "pid": st.pid if now != Status.STOPPED else 0,
        "status": now.value,
        "bundle": st.bundle,
        "rootfs": st.rootfs,
        "created": st.created,
        "owner": st.owner,
        "annotations": st.annotations,
    }
    if now != Status.STOPPED and (size := vm_size(d)):
        out["vm"] = size  # beside runc's fields: what the pod's VM has now (docs/resize.md)
    return out


def vm_size(d: str) -> dict | None:
    """The pod's VM size, as its monitor last wrote it beside monitor.sock."""
    import json

    sock = os.path.realpath(os.path.join(d, record.MONITOR_SOCK))
    try:
        with open(os.path.join(os.path.dirname(sock), "vm.json")) as f:
            size = json.load(f)
    except (OSError, ValueError):
        return None
    return size if isinstance(size, dict) else None


def list_states(root: str, ids: list[str]) -> list[dict]:
    """``state`` of each of ``ids`` that still exists."""
    out = []
    for cid in ids:
        try:
            out.append(state(root, cid))
        except ContainerNotFound:
            continue
    return out


def run_hooks(st: State, kind: str, now: Status) -> None:
    """Run the container's ``kind`` hooks (config.json's, as recorded), given the state."""
    if not st.hooks.get(kind):
        return
    from hyperpy import hooks
    from hyperpy.verbs import log

    log()  # hooks log their warnings
    given = {"ociVersion": OCI_VERSION, "id": st.id, "status": now.value, "pid": st.pid,
             "bundle": st.bundle, "annotations": st.annotations}  # fmt: skip
    hooks.run({"hooks": st.hooks}, kind, given)
