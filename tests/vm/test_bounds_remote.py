"""The remote driver's relayed console is bounded as the local one is (issue 21): a
privileged container floods the serial console of a VM on the "remote" host (a real sshd,
tests/sshd.py); on the node the console log stays under [vm] console_log_max_mb through
several turns of its ring, the monitor's memory stays flat (SSH's windows bound what waits
on the way), and the pod keeps answering state and exec."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import HYPERPY, needs_artifacts
from tests.vm.test_bounds import _rss_kib, flood_bundle, watch_ring
from tests.vm.test_lifecycle import subreaper  # noqa: F401 - fixture
from tests.vm.test_remote import hp, remote, sshd  # noqa: F401 - fixtures

pytestmark = [pytest.mark.vm, needs_artifacts, pytest.mark.usefixtures("subreaper")]


def test_a_console_flood_on_the_remote_host_stays_within_its_bound(
    root,
    bundle,
    tmp_path,
    remote,  # noqa: F811 - the fixture imported above
    monkeypatch,
):
    config = Path(remote.config())
    config.write_text(config.read_text().replace("[vm]\n", "[vm]\nconsole_log_max_mb = 1\n"))
    monkeypatch.setenv("HYPERPY_CONFIG", str(config))
    bound = 1 << 20
    b = flood_bundle(bundle, tmp_path)
    cid = "rflood1"
    d = os.path.join(root, cid)
    out = tmp_path / "out"
    with open(out, "wb") as f:
        res = subprocess.run(remote.hyperpy_argv(HYPERPY, "--root", root, "create", "--bundle",
                                                 str(b), cid),
                             stdin=subprocess.DEVNULL, stdout=f, stderr=f, timeout=180)  # fmt: skip
    assert res.returncode == 0, out.read_text()
    try:
        assert hp(remote, root, "start", cid).returncode == 0
        monitor = json.loads(open(os.path.join(d, "state.json")).read())["monitor_pid"]
        base = _rss_kib(monitor)
        most, most_rss = watch_ring(d, bound, monitor)
        assert most_rss - base < 16 << 10, (base, most_rss)
        st = json.loads(hp(remote, root, "state", cid).stdout)
        assert st["status"] == "running"
        res = hp(remote, root, "exec", cid, "echo", "still-here")
        assert (res.returncode, res.stdout) == (0, b"still-here\n"), res.stderr.decode()
        assert b"A" * 2000 in open(os.path.join(d, "console.log"), "rb").read()
        assert os.path.getsize(os.path.join(d, "qemu.log")) <= 1 << 20
        print(
            f"console log at most {most} bytes (bound {bound}), 6 turns; monitor "
            f"RSS {base} -> at most {most_rss} KiB"
        )
    finally:
        hp(remote, root, "delete", "--force", cid)
