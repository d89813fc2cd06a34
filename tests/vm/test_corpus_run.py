"""A handful of the corpus's configs (tests/corpus/data: as docker, podman, containerd's CRI
and ctr wrote them) run to completion in a real guest, as written but for what cannot be
here: the rootfs (busybox), the captured bind sources (stand-ins), CRI's network namespace
(gone with the capture: a new one) and the command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import hyperpy, needs_artifacts
from tests.corpus import stand_ins

pytestmark = [pytest.mark.vm, needs_artifacts]

DATA = Path(__file__).resolve().parents[1] / "corpus" / "data"
RUN = ["docker-default", "docker-privileged", "docker-read-only", "docker-user",
       "docker-memory-cpus", "podman-default", "cri-sandbox-slice", "ctr-run"]  # fmt: skip
SCRIPT = "echo corpus-ok; id -u; grep -c . /proc/self/status >/dev/null"


@pytest.mark.parametrize("name", RUN)
def test_a_captured_config_runs(root, bundle, tmp_path, name):
    rootfs = str(Path(bundle(["true"])) / "rootfs")
    spec = stand_ins(json.loads((DATA / f"{name}.json").read_text()), tmp_path, rootfs)
    for ns in spec["linux"].get("namespaces") or []:
        if ns["type"] == "network":
            ns.pop("path", None)  # CRI's /var/run/netns/cni-*: gone with the capture
    spec["process"].update(args=["sh", "-c", SCRIPT], terminal=False)
    b = tmp_path / "bundle"
    b.mkdir()
    (b / "config.json").write_text(json.dumps(spec))
    res = hyperpy(root, "run", "--bundle", str(b), name[:20])
    assert res.returncode == 0, res.stderr.decode()
    uid = spec["process"]["user"]["uid"]
    assert res.stdout.decode().split() == ["corpus-ok", str(uid)], res.stdout
