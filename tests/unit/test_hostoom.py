"""hyperpy.hostoom on this host's real cgroup v1 memory hierarchy: one OOM, seen by a listener
registered as containerd's runc shim and conmon register theirs, and nothing killed."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

import pytest

from hyperpy import hostoom

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.isfile(os.path.join(hostoom.MEMORY, "cgroup.procs")),
    reason="needs root and a cgroup v1 memory hierarchy at /sys/fs/cgroup/memory",
)


def _oom_control(cg: str) -> dict[str, int]:
    with open(os.path.join(cg, "memory.oom_control")) as f:
        return {k: int(v) for k, v in (line.split() for line in f)}


def _read(cg: str, name: str) -> str:
    with open(os.path.join(cg, name)) as f:
        return f.read().strip()


@pytest.fixture
def cgroup():
    parent = os.path.join(hostoom.MEMORY, "hyperpy-unit")
    cg = os.path.join(parent, f"oom-{os.getpid()}")
    os.makedirs(cg)
    bystander = subprocess.Popen(["sleep", "60"])  # a process of the pod that must live on
    with open(os.path.join(cg, "cgroup.procs"), "w") as f:
        f.write(str(bystander.pid))
    try:
        yield cg, bystander
    finally:
        bystander.kill()
        bystander.wait(10)
        deadline = time.monotonic() + 10
        while True:
            try:
                os.rmdir(cg)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def _listen(cg: str) -> int:
    """An eventfd on the cgroup's OOM notifications, registered as the runc shim does."""
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    ctl = os.open(os.path.join(cg, "memory.oom_control"), os.O_RDONLY)
    with open(os.path.join(cg, "cgroup.event_control"), "w") as f:
        f.write(f"{efd} {ctl}")
    os.close(ctl)
    return efd


def _report_from_inside(cg: str) -> subprocess.CompletedProcess:
    code = (
        f"import os; open({os.path.join(cg, 'cgroup.procs')!r}, 'w').write(str(os.getpid()));"
        "from hyperpy import hostoom; r = hostoom.report();"
        "print(r, open('/proc/self/cgroup').read())"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30)  # fmt: skip


@pytest.mark.parametrize("limit", [None, 512 << 20])
def test_one_oom_is_signalled_and_nothing_is_killed(cgroup, limit):
    cg, bystander = cgroup
    if limit:
        with open(os.path.join(cg, "memory.limit_in_bytes"), "w") as f:
            f.write(str(limit))
    before_limit = _read(cg, "memory.limit_in_bytes")
    efd = _listen(cg)
    try:
        res = _report_from_inside(cg)
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith("True"), res.stdout + res.stderr
        ready, _, _ = select.select([efd], [], [], 5)
        assert ready, "the listener saw no OOM"
        assert int.from_bytes(os.read(efd, 8), sys.byteorder) >= 1
    finally:
        os.close(efd)
    # as it was, and nothing killed: the OOM only paused the helper, which was then ended
    assert _read(cg, "memory.limit_in_bytes") == before_limit
    ctl = _oom_control(cg)
    assert ctl["oom_kill_disable"] == 0 and ctl["under_oom"] == 0, ctl
    assert ctl.get("oom_kill", 0) == 0, ctl
    assert bystander.poll() is None
    # the reporter stepped out to the parent first; only the bystander is left inside
    assert "memory:/hyperpy-unit\n" in res.stdout, res.stdout
    assert _read(cg, "cgroup.procs").split() == [str(bystander.pid)]


def test_no_memory_cgroup_is_said_not_done(caplog):
    assert hostoom.report("") is False
    assert "not reported" in caplog.text
