"""Process identity, not numbers (issue 21): every pid hyperpy records is recorded with its
start time, and a process that took a recorded pid after ours died is "already gone": never
signalled, and not taken for a live monitor.

Made deterministic in a pid namespace of the test's own: the pod is created there, its
monitor killed (QEMU and the proxy follow it), and ``ns_last_pid`` makes the next process
take the monitor's pid, with a command line naming the pod's state directory, as hyperpy's
own processes have."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import HYPERPY, needs_artifacts

pytestmark = [pytest.mark.vm, needs_artifacts]

INSIDE = r"""
import json, os, subprocess, sys, time
hyperpy, root, bundle = sys.argv[1:4]
d = os.path.join(root, "reused1")

def hp(*args):
    return subprocess.run([hyperpy, "--root", root, *args], capture_output=True, timeout=120)

log = os.path.join(os.path.dirname(bundle), "create.log")
res = subprocess.run([hyperpy, "--root", root, "--log", log, "create", "--bundle", bundle,
                      "reused1"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, timeout=180)  # the proxy keeps its stdio
assert res.returncode == 0, open(log).read()
raw = json.load(open(os.path.join(d, "state.json")))
mon, pids = raw["monitor_pid"], [raw["monitor_pid"], raw["qemu_pid"], raw["pid"]]
before = json.loads(hp("state", "reused1").stdout)["status"]
os.kill(mon, 9)
deadline = time.monotonic() + 30
while any(os.path.exists(f"/proc/{p}/stat") for p in pids):
    assert time.monotonic() < deadline, "the pod's processes did not follow their monitor"
    for p in pids:
        try:
            os.waitpid(p, os.WNOHANG)  # we are PID 1 here: reap what was re-parented to us
        except ChildProcessError:
            pass
    time.sleep(0.05)
with open("/proc/sys/kernel/ns_last_pid", "w") as f:
    f.write(str(mon - 1))
impostor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", d])
after = json.loads(hp("state", "reused1").stdout)["status"]
deleted = hp("delete", "--force", "reused1")
time.sleep(0.5)
print(json.dumps({"mon": mon, "impostor": impostor.pid, "before": before, "after": after,
                  "delete": deleted.returncode, "stderr": deleted.stderr.decode(),
                  "alive": impostor.poll() is None, "left": os.path.exists(d)}))
impostor.kill()
"""


def test_a_reused_pid_is_left_alone(root, bundle):
    b = bundle(["sleep", "1000"])
    res = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", INSIDE,
         HYPERPY, root, b], capture_output=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr.decode()
    got = json.loads(res.stdout.decode().splitlines()[-1])
    assert got["impostor"] == got["mon"], got  # it did take the monitor's pid
    assert (got["before"], got["after"]) == ("created", "stopped"), got
    assert got["delete"] == 0 and not got["left"], got
    assert got["alive"], f"delete --force killed the process that took the monitor's pid: {got}"
