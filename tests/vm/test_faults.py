"""Fault handling as the runc shim meets it: the process behind --pid-file killed, a second
proxy attaching, delete --force of a running container, a stopped monitor or QEMU.

The test is a child subreaper (the shim is one), so it waits on the pid-file process and
sees the exit status the shim would report.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import pytest

from agent import protocol as P
from tests.conftest import hyperpy, needs_artifacts, qemu_may_write
from tests.vm.test_lifecycle import create, status_of, subreaper, wait_exit  # noqa: F401

# on both hypervisor drivers (tests/vm/conftest.py)
pytestmark = [pytest.mark.vm, needs_artifacts, pytest.mark.usefixtures("driver")]


def running(root, bundle, cid, args=("sleep", "1000")):
    pid = create(root, bundle(list(args)), cid)
    hyperpy(root, "start", cid, check=True)
    return pid


def state_json(root, cid):
    with open(f"{root}/{cid}/state.json") as f:
        return json.load(f)


def wait_status(root, cid, want, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if status_of(root, cid)["status"] == want:
            return
        time.sleep(0.1)
    raise AssertionError(f"{cid} is {status_of(root, cid)['status']}, not {want}")


def test_killing_the_pid_file_process_kills_the_container(root, bundle):
    pid = running(root, bundle, "orphan")
    os.kill(pid, signal.SIGKILL)
    assert wait_exit(pid) == -signal.SIGKILL
    wait_status(root, "orphan", "stopped")
    assert status_of(root, "orphan")["pid"] == 0
    res = hyperpy(root, "ps", "--format", "json", "orphan", check=True)
    assert json.loads(res.stdout) == []
    with open(f"{root}/orphan/exit.json") as f:
        assert json.load(f)["status"] == 128 + signal.SIGKILL  # it really died in the guest
    hyperpy(root, "delete", "orphan", check=True)


def test_a_second_attach_is_refused_and_the_exit_reaches_the_proxy(root, bundle):
    pid = running(root, bundle, "owned")
    proc = state_json(root, "owned")["init_proc"]
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(f"{root}/owned/monitor.sock")
        s.settimeout(10)
        s.sendall(P.encode_msg({"id": 5, "op": "attach", "proc": proc}))
        dec = P.Decoder()
        replies: list = []
        while not replies:
            replies = [f.message() for f in dec.feed(s.recv(65536)) if isinstance(f, P.Frame)]
        assert replies[0]["id"] == 5 and not replies[0]["ok"]
        assert "already has a proxy" in replies[0]["error"]
        hyperpy(root, "kill", "owned", "KILL", check=True)
        assert wait_exit(pid) == 128 + signal.SIGKILL  # the real proxy got the exit
    hyperpy(root, "delete", "owned", check=True)


def test_delete_force_of_a_running_container_reports_sigkill(root, bundle):
    pid = running(root, bundle, "forced")
    hyperpy(root, "delete", "--force", "forced", check=True)
    assert wait_exit(pid) == 128 + signal.SIGKILL  # as runc: 137, not the VM's 255
    assert not os.path.exists(f"{root}/forced")


@pytest.mark.parametrize("which", ["monitor_pid", "qemu_pid"])
def test_a_stopped_sandbox_is_diagnosed_and_delete_force_ends_it(root, bundle, which):
    pid = running(root, bundle, "frozen")
    stopped = state_json(root, "frozen")[which]
    os.kill(stopped, signal.SIGSTOP)
    try:
        for args in (("kill", "frozen", "TERM"), ("exec", "frozen", "true")):
            res = hyperpy(root, *args, timeout=20)
            assert res.returncode != 0
            err = res.stderr.decode()
            assert f"(pid {stopped}) is stopped" in err and "delete --force" in err, err
        hyperpy(root, "delete", "--force", "frozen", timeout=20, check=True)
    finally:
        if os.path.exists(f"/proc/{stopped}"):
            os.kill(stopped, signal.SIGCONT)
    assert wait_exit(pid, timeout=20) in (128 + signal.SIGKILL, 255)


def test_a_bind_mount_root_keeps_the_source_name(root, bundle, tmp_path):
    src = tmp_path / "mydata"
    src.mkdir()
    qemu_may_write(str(src))
    b = bundle(["sh", "-c", "awk '$5 == \"/data\" || $5 == \"/ro\" {print $5, $4}' "
                "/proc/self/mountinfo"])  # fmt: skip
    with open(f"{b}/config.json") as f:
        spec = json.load(f)
    spec["mounts"] += [
        {"destination": "/data", "type": "bind", "source": str(src), "options": ["rbind"]},
        {"destination": "/ro", "type": "bind", "source": str(src), "options": ["rbind", "ro"]},
    ]
    with open(f"{b}/config.json", "w") as f:
        json.dump(spec, f)
    out = hyperpy(root, "run", "--bundle", b, "named", check=True).stdout.decode()
    roots = dict(line.split() for line in out.splitlines())
    assert roots["/data"].endswith("/mydata") and roots["/ro"].endswith("/mydata"), out
