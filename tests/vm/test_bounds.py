"""What the guest can make the host store is bounded (issue 21): a privileged container
(docker --privileged's config, from the corpus) floods the serial console from inside the
guest, and the pod's console log on the host stays under [vm] console_log_max_mb while the
pod keeps answering state and exec."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import HYPERPY, hyperpy, needs_artifacts
from tests.corpus import stand_ins

pytestmark = [pytest.mark.vm, needs_artifacts, pytest.mark.usefixtures("driver")]

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "data"
FLOOD = (
    "mknod /ttyS0 c 4 64 && echo flooding && "
    'exec yes "$(head -c 2000 /dev/zero | tr "\\0" A)" > /ttyS0'
)


def _log_bytes(d: str) -> int:
    return sum(os.path.getsize(os.path.join(d, n)) for n in ("console.log", "console.log.1")
               if os.path.exists(os.path.join(d, n)))  # fmt: skip


def test_a_console_flood_stays_within_its_bound(root, bundle, tmp_path, vm_config, driver):
    bound = 1 << 20
    env = dict(os.environ, HYPERPY_CONFIG=vm_config(console_log_max_mb=1))
    rootfs = str(Path(bundle(["true"])) / "rootfs")
    spec = stand_ins(json.loads((CORPUS / "docker-privileged.json").read_text()), tmp_path,
                     rootfs)  # fmt: skip
    spec["process"].update(args=["sh", "-c", FLOOD], terminal=False)
    b = tmp_path / "bundle"
    b.mkdir()
    (b / "config.json").write_text(json.dumps(spec))
    cid = "flood1"
    d = os.path.join(root, cid)
    out = tmp_path / "out"
    with open(out, "wb") as f:  # the container's stdio (the proxy keeps it): not a pipe
        res = subprocess.run([HYPERPY, "--root", root, "create", "--bundle", str(b), cid],
                             stdin=subprocess.DEVNULL, stdout=f, stderr=f, env=env,
                             timeout=180)  # fmt: skip
    assert res.returncode == 0, out.read_text()
    try:
        assert hyperpy(root, "start", cid, env=env).returncode == 0
        rotations, seen, most = 0, None, 0
        deadline = time.monotonic() + 120
        while rotations < 6:  # the bound passed three times over
            assert time.monotonic() < deadline, f"only {rotations} rotations"
            try:
                ino = os.stat(os.path.join(d, "console.log.1")).st_ino
            except FileNotFoundError:
                ino = None
            if ino is not None and ino != seen:
                rotations, seen = rotations + 1, ino
            most = max(most, _log_bytes(d))
            assert most <= bound + 65536, most  # one read's worth of slack
            time.sleep(0.05)
        # the pod answers meanwhile
        st = json.loads(hyperpy(root, "state", cid, env=env).stdout)
        assert st["status"] == "running"
        res = hyperpy(root, "exec", cid, "echo", "still-here", env=env, timeout=60)
        assert (res.returncode, res.stdout) == (0, b"still-here\n"), res.stderr.decode()
        assert b"A" * 2000 in open(os.path.join(d, "console.log"), "rb").read()
    finally:
        subprocess.run([HYPERPY, "--root", root, "delete", "--force", cid], env=env,
                       capture_output=True, timeout=60)  # fmt: skip
