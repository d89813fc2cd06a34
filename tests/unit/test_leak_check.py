"""The tests' leak check sees only what the test itself started (issue 9, item 12): a
second run on the same machine, or a sibling root whose name extends ours, is not a leak."""

from __future__ import annotations

import subprocess
import time

from tests.conftest import processes_under


def test_only_the_tests_own_paths_count(tmp_path):
    mine, sibling = tmp_path / "root1", tmp_path / "root10"
    (mine / "c1").mkdir(parents=True)
    (sibling / "c1").mkdir(parents=True)
    # stand-ins: a monitor-like process naming a state dir, a QEMU-like one running in one
    procs = [
        subprocess.Popen(["sh", "-c", f"sleep 30; : {mine}/c1"]),
        subprocess.Popen(["sleep", "31"], cwd=mine / "c1"),
        subprocess.Popen(["sh", "-c", f"sleep 32; : {sibling}/c1 qemu-system-x86_64"]),
        subprocess.Popen(["sleep", "33"], cwd=sibling / "c1"),
        # a jailed QEMU names its state dir only as -name hyperpy:R/ID
        subprocess.Popen(["sh", "-c", "sleep 34; : -name", f"hyperpy:{mine}/c1"]),
        subprocess.Popen(["sh", "-c", "sleep 35; : -name", f"hyperpy:{sibling}"]),
    ]
    try:
        time.sleep(0.2)
        found = processes_under(str(mine))
        assert sorted(int(line.split()[0]) for line in found) == sorted(
            p.pid for p in procs[:2] + procs[4:5]
        ), found
        assert len(processes_under(str(sibling))) == 3
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert processes_under(str(mine)) == []
