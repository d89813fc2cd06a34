"""Every config.json of the corpus (tests/corpus/data: as docker, podman, containerd's CRI
and ctr wrote them; re-captured by ``python -m tests.corpus.capture``) passes what
``hyperpy create`` checks before a VM boots: validation (without --systemd-cgroup: none of
these tools passes it here), the share plan, preflight, the host cgroup path, the network
plan and the namespace paths, and, as the agent would in the guest, the seccomp filter's
compilation, the capability sets and the mount options.

The captured host paths do not exist here: root.path and every bind source under the
capture's directory are pointed at stand-ins in a temporary directory (a file or a
directory, as the tool made it), and a network namespace path that does not exist
(CRI's /var/run/netns/cni-*) is left out of the network plan, as a new namespace.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.corpus import CASES, stand_ins

DATA = Path(__file__).resolve().parents[1] / "corpus" / "data"
INDEX = json.loads((DATA / "INDEX.json").read_text())
FILES = sorted(p.name for p in DATA.glob("*.json") if p.name != "INDEX.json")
CRI_TYPE = "io.kubernetes.cri.container-type"
CRI_SANDBOX = "io.kubernetes.cri.sandbox-id"


def test_the_corpus_holds_every_case():
    missing = [c for c in CASES if f"{c}.json" not in FILES]
    assert not missing, f"cases not captured: {missing} (python -m tests.corpus.capture)"
    assert sorted(INDEX["files"]) == FILES, "INDEX.json and the files disagree"
    for name, entry in INDEX["files"].items():
        assert entry["tool"] and entry["version"] and entry["command"], name


def test_the_cases_are_what_they_say():
    """A capture that recorded the wrong container would pass vacuously: spot-check."""

    def spec(case: str) -> dict:
        return json.loads((DATA / f"{case}.json").read_text())

    assert "CAP_SYS_ADMIN" in spec("docker-privileged")["process"]["capabilities"]["bounding"]
    assert spec("docker-read-only")["root"].get("readonly") is True
    assert (
        "CAP_NET_ADMIN" in spec("docker-cap-add-net-admin")["process"]["capabilities"]["bounding"]
    )
    assert any(d["path"] == "/dev/fuse" for d in spec("docker-device-fuse")["linux"]["devices"])
    res = spec("docker-memory-cpus")["linux"]["resources"]
    assert res["memory"]["limit"] == 64 << 20 and res["cpu"]["quota"] == 150000
    assert spec("docker-user")["process"]["user"]["uid"] == 1000
    assert "CAP_SYS_ADMIN" in spec("podman-privileged")["process"]["capabilities"]["bounding"]
    member = spec("podman-pod-container")["linux"]["namespaces"]
    assert any(ns["type"] == "network" and ns.get("path") for ns in member)
    for kind, path in (
        ("cgroupfs", "/kubepods/burstable/pod"),
        ("slice", "kubepods-burstable-pod"),
    ):
        for role in ("sandbox", "container"):
            s = spec(f"cri-{role}-{kind}")
            assert s["annotations"][CRI_TYPE] == role
            assert s["linux"]["cgroupsPath"].startswith(path)
    assert ":cri-containerd:" in spec("cri-container-slice")["linux"]["cgroupsPath"]
    mounts = {m["destination"] for m in spec("cri-container-cgroupfs")["mounts"]}
    assert {"/dev/shm", "/data"} <= mounts


def _joins_a_sandbox(spec: dict) -> bool:
    """As verbs.pod.sandbox_of: CRI's annotations, or another container's network by pid."""
    ann = spec.get("annotations") or {}
    if ann.get(CRI_TYPE) == "container" and ann.get(CRI_SANDBOX):
        return True
    return any(
        ns.get("type") == "network" and re.fullmatch(r"/proc/\d+/ns/net", ns.get("path") or "")
        for ns in (spec.get("linux") or {}).get("namespaces") or []
    )


@pytest.mark.parametrize("name", FILES)
def test_create_accepts_it(name, tmp_path):
    import os

    from agent import caps, linux, seccomp
    from hyperpy import network, preflight, share
    from hyperpy.hostcgroup import relative_path
    from hyperpy.oci.validate import validate_spec

    entry = INDEX["files"][name]
    cid = entry["container_id"]
    spec = stand_ins(json.loads((DATA / name).read_text()), tmp_path)
    config = str(tmp_path / "config.json")
    (tmp_path / "config.json").write_text(json.dumps(spec))

    # hyperpy create, in its order, up to the VM (verbs.create.create)
    validate_spec(spec, config, systemd_cgroup=False)
    plan = share.plan(spec, str(tmp_path), cid)
    preflight.resources(spec, config)
    preflight.spec_fits(spec, plan.guest_spec, config)
    relative_path(spec["linux"].get("cgroupsPath", ""), cid, False)
    joins = _joins_a_sandbox(spec)
    guest = spec
    if not joins:
        planned = json.loads(json.dumps(spec))
        for ns in planned["linux"].get("namespaces") or []:
            if ns.get("type") == "network" and not os.path.exists(ns.get("path") or "/"):
                del ns["path"]  # CRI's cni-* namespace, gone with the capture
        guest, _ = network.plan(planned)
    for i, ns in enumerate(guest["linux"].get("namespaces") or []):
        # verbs.pod.resolve_namespace_paths: a path names a container of the same VM
        if ns.get("path"):
            assert joins and re.fullmatch(
                r"/proc/\d+/ns/\w+", ns["path"]
            ), f"/linux/namespaces/{i}/path {ns['path']!r}: not a namespace of the sandbox"

    # what the agent does with it in the guest, where it needs no VM
    profile = spec["linux"].get("seccomp")
    if profile:
        seccomp.compile_filter(profile)
    caps.masks(spec["process"].get("capabilities"))
    for m in plan.guest_spec.get("mounts") or []:
        linux.parse_mount_options(m.get("options") or [])
