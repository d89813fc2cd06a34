"""Pods: which container's VM a new container joins, and its namespace paths in that VM.

CRI's annotations (or ``io.hyperpy.sandbox``) name the sandbox; a namespace path naming a
container here by its host pid (docker's ``--network container:ID``, podman's ``--ipc
container:ID``) joins that container's VM, since a guest's namespaces cannot be shared
by another VM.
"""

from __future__ import annotations

import json
import os
import re

from hyperpy.errors import ContainerNotFound, HyperpyError, SpecError
from hyperpy.sandbox import record
from hyperpy.sandbox.model import Status
from hyperpy.sandbox.record import State
from hyperpy.sandbox.store import Store
from hyperpy.verbs import cgroup
from hyperpy.verbs.state import status

SANDBOX_ANNOTATION = "io.hyperpy.sandbox"
CRI_TYPE = "io.kubernetes.cri.container-type"
CRI_SANDBOX = "io.kubernetes.cri.sandbox-id"
_NS_PATH = re.compile(r"/proc/(\d+)/ns/\w+")


def _stopped(store: Store, st: State) -> bool:
    return status(store.dir(st.id), st) == Status.STOPPED


def sandbox_of(store: Store, spec: dict, cid: str) -> State | None:
    """The container whose VM this one joins, from the annotations CRI sets (or
    ``io.hyperpy.sandbox``); None when it gets a VM of its own."""
    ann = spec.get("annotations") or {}
    key = ""
    if ann.get(SANDBOX_ANNOTATION):
        key = SANDBOX_ANNOTATION
    elif ann.get(CRI_TYPE) == "container" and ann.get(CRI_SANDBOX):
        key = CRI_SANDBOX
    if not key:
        return namespace_owner(store, spec)
    if ann[key] == cid:
        return None
    pointer = "/annotations/" + key.replace("~", "~0").replace("/", "~1")
    try:
        sandbox = store.load(ann[key])
    except ContainerNotFound:
        raise SpecError(
            f"sandbox {ann[key]!r} does not exist under {store.root}: create it first",
            pointer,
        ) from None
    if sandbox.sandbox:
        sandbox = store.load(sandbox.sandbox)
    if _stopped(store, sandbox):
        raise SpecError(f"sandbox {sandbox.id!r} is stopped: its VM is gone", pointer)
    return sandbox


def by_pid(store: Store) -> dict[int, State]:
    """The containers under this root by the host pid they report (their proxy's)."""
    out = {}
    for other in store.ids():
        try:
            o = store.load(other)
        except HyperpyError:
            continue
        if o.pid:
            out[o.pid] = o
    return out


def namespace_owner(store: Store, spec: dict) -> State | None:
    """The sandbox whose namespaces a container asks to share by naming one of its
    containers' namespaces by pid (docker's ``--network container:ID``, podman's
    ``--ipc container:ID`` or a pod's members): a guest's namespaces cannot be shared
    by another VM, so the container joins that VM. The network decides first: a
    network path naming no container here (a runc container's, say) is the network of
    a VM of the container's own."""
    nss = (spec.get("linux") or {}).get("namespaces") or []
    nss = sorted(nss, key=lambda ns: ns.get("type") != "network")
    pids = None
    for ns in nss:
        m = _NS_PATH.fullmatch(ns.get("path") or "")
        if not m:
            continue
        pids = by_pid(store) if pids is None else pids
        owner = pids.get(int(m.group(1)))
        if owner is None:
            if ns.get("type") == "network":
                return None
            continue
        sandbox = store.load(owner.sandbox) if owner.sandbox else owner
        if _stopped(store, sandbox):
            raise SpecError(f"container {owner.id!r}, whose namespaces this one joins, "
                            "is stopped", "/linux/namespaces")  # fmt: skip
        return sandbox
    return None


def join(store: Store, d: str, st: State, sandbox: State) -> None:
    """Use the sandbox's VM: its monitor socket appears in our state dir."""
    st.monitor_pid, st.qemu_pid = sandbox.monitor_pid, sandbox.qemu_pid
    os.symlink(os.path.join(store.dir(sandbox.id), record.MONITOR_SOCK),
               os.path.join(d, record.MONITOR_SOCK))  # fmt: skip
    store.save(st)
    cgroup(st.host_cgroup).create()


def resolve_namespace_paths(store: Store, spec: dict, st: State) -> dict:
    """/proc/PID/ns/X naming a container of the same VM (by its host pid, the proxy,
    as CRI writes it) becomes ``hyperpy:ID``, which the agent resolves in the guest."""
    nss = (spec.get("linux") or {}).get("namespaces") or []
    if not any(ns.get("path") for ns in nss):
        return spec
    owner = st.sandbox or st.id
    ids = {
        pid: o.id
        for pid, o in by_pid(store).items()
        if (o.sandbox or o.id) == owner and o.id != st.id
    }
    spec = json.loads(json.dumps(spec))
    for i, ns in enumerate(spec["linux"]["namespaces"]):
        path = ns.get("path")
        if not path:
            continue
        m = _NS_PATH.fullmatch(path)
        if not m or int(m.group(1)) not in ids:
            raise SpecError(
                f"namespace path {path!r} is not a namespace of a container in this "
                f"container's VM (a guest's namespaces are reachable only from the same "
                "sandbox): use /proc/<pid>/ns/<type> with the pid of such a container",
                f"/linux/namespaces/{i}/path",
            )
        ns["path"] = "hyperpy:" + ids[int(m.group(1))]
    return spec
