"""Which VM a container joins when it names another container's namespaces by host pid
(verbs.pod.sandbox_of): docker's --network container:, podman's --ipc container: and a
podman pod's members, whose namespace paths are /proc/<infra's pid>/ns/<type>."""

from __future__ import annotations

import os

from hyperpy.sandbox.store import State, Store
from hyperpy.verbs.pod import sandbox_of

BASE_PID = 4_000_001  # the base container's proxy, as its state reports it


def _running(root: str, cid: str, pid: int) -> None:
    store = Store(root)
    store.make(cid)
    store.save(State(id=cid, bundle="/b", rootfs="/b/rootfs", created="now", status="running",
                     pid=pid, monitor_pid=os.getpid()))  # fmt: skip


def _spec(*namespaces: dict) -> dict:
    return {"linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, *namespaces]}}


def test_an_ipc_path_of_a_container_joins_its_vm_with_a_network_of_its_own(tmp_path):
    _running(str(tmp_path), "base", BASE_PID)
    store = Store(str(tmp_path))
    spec = _spec({"type": "network"}, {"type": "ipc", "path": f"/proc/{BASE_PID}/ns/ipc"})
    owner = sandbox_of(store, spec, "new")
    assert owner is not None and owner.id == "base"


def test_a_pod_member_joins_by_its_network_path(tmp_path):
    _running(str(tmp_path), "infra", BASE_PID)
    store = Store(str(tmp_path))
    spec = _spec(*({"type": t, "path": f"/proc/{BASE_PID}/ns/{n}"}
                   for t, n in (("network", "net"), ("ipc", "ipc"), ("uts", "uts"))))  # fmt: skip
    owner = sandbox_of(store, spec, "member")
    assert owner is not None and owner.id == "infra"


def test_a_network_path_of_no_container_here_is_a_vm_of_its_own(tmp_path):
    _running(str(tmp_path), "base", BASE_PID)
    store = Store(str(tmp_path))
    spec = _spec({"type": "ipc", "path": f"/proc/{BASE_PID}/ns/ipc"},
                 {"type": "network", "path": "/proc/4000002/ns/net"})  # fmt: skip
    assert sandbox_of(store, spec, "new") is None
    assert sandbox_of(store, _spec({"type": "network"}), "new") is None
