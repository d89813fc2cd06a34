"""containerd's runc v2 shim driving hyperpy (`--runc-binary`), through ctr."""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from tests.e2e.conftest import IMAGE, run_in_pty, runtime_roots, state_left

pytestmark = pytest.mark.e2e


def ctr_run(daemons, cid: str, *cmd: str, flags: tuple[str, ...] = ("--rm",), **kw):
    return subprocess.run(
        daemons.ctr_run_argv(*flags, IMAGE, cid, *cmd), capture_output=True, timeout=180, **kw
    )


def task_status(daemons, cid: str) -> str:
    for line in daemons.ctr("task", "ls").stdout.decode().splitlines()[1:]:
        words = line.split()
        if words and words[0] == cid:
            return words[2]
    return ""


def wait_status(daemons, cid: str, want: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while task_status(daemons, cid) != want:
        assert time.monotonic() < deadline, f"{cid} is {task_status(daemons, cid)!r}, not {want}"
        time.sleep(0.1)


def cleanup(daemons, cid: str) -> None:
    daemons.ctr("task", "kill", "-s", "KILL", cid)
    daemons.ctr("task", "delete", "-f", cid)
    daemons.ctr("containers", "rm", cid)


def test_echo(daemons, no_leftovers):
    res = ctr_run(daemons, "echo1", "sh", "-c", "echo hello from ctr; uname -r")
    assert res.returncode == 0, res.stderr.decode()
    out = res.stdout.decode().splitlines()
    assert out[0] == "hello from ctr" and out[1].endswith("-hyperpy")


def test_exit_code_passes_through(daemons, no_leftovers):
    res = ctr_run(daemons, "exit1", "sh", "-c", "exit 3")
    assert res.returncode == 3, res.stderr.decode()


def test_tty(daemons, no_leftovers):
    argv = daemons.ctr_run_argv("--rm", "-t", IMAGE, "tty1", "sh", "-c", "tty; stty size")
    rc, out = run_in_pty(argv)
    assert rc == 0, out
    assert b"/dev/pts/" in out, out


def test_exec_with_and_without_tty(daemons, no_leftovers):
    res = ctr_run(daemons, "exec1", "sleep", "1000", flags=("-d",))
    assert res.returncode == 0, res.stderr.decode()
    try:
        r = daemons.ctr("task", "exec", "--exec-id", "e1", "exec1", "sh", "-c", "echo in; exit 5")
        assert r.returncode == 5 and r.stdout == b"in\n", r.stderr.decode()
        argv = ["ctr", "-a", daemons.ctd_sock, "-n", daemons.ns, "task", "exec", "-t",
                "--exec-id", "e2", "exec1", "sh", "-c", "tty"]  # fmt: skip
        rc, out = run_in_pty(argv)
        assert rc == 0 and b"/dev/pts/" in out, out
    finally:
        cleanup(daemons, "exec1")


@pytest.mark.parametrize("sig,status", [("SIGTERM", 4), ("SIGKILL", 137)])
def test_kill(daemons, no_leftovers, sig, status):
    cid = f"kill-{status}"
    p = subprocess.Popen(
        daemons.ctr_run_argv("--rm", IMAGE, cid, "sh", "-c",
                             'trap "echo got TERM; exit 4" TERM; echo ready; '
                             "while true; do sleep 0.1; done"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert p.stdout is not None
    assert p.stdout.readline() == b"ready\n"
    res = daemons.ctr("task", "kill", "-s", sig, cid)
    assert res.returncode == 0, res.stderr.decode()
    out, err = p.communicate(timeout=60)
    assert p.returncode == status, err.decode()
    if sig == "SIGTERM":
        assert b"got TERM" in out


def test_ps_pause_resume_metrics(daemons, no_leftovers):
    script = "while true; do cut -d' ' -f1 /proc/uptime >> /tmp/ticks; sleep 0.1; done"
    res = ctr_run(daemons, "pp1", "sh", "-c", script, flags=("-d",))
    assert res.returncode == 0, res.stderr.decode()
    try:
        line = [ln for ln in daemons.ctr("task", "ls").stdout.decode().splitlines()
                if ln.startswith("pp1 ")][0]  # fmt: skip
        task_pid = int(line.split()[1])
        ps = daemons.ctr("task", "ps", "pp1").stdout.decode()
        assert str(task_pid) in ps.split(), ps
        time.sleep(1)
        assert daemons.ctr("task", "pause", "pp1").returncode == 0
        wait_status(daemons, "pp1", "PAUSED")
        time.sleep(1.5)
        assert daemons.ctr("task", "resume", "pp1").returncode == 0
        wait_status(daemons, "pp1", "RUNNING")
        time.sleep(0.5)
        r = daemons.ctr("task", "exec", "--exec-id", "t", "pp1", "cat", "/tmp/ticks")
        ticks = [float(x) for x in r.stdout.decode().split()]
        gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
        assert max(gaps) > 1.2, gaps  # nothing ran while paused
        assert ticks[-1] - ticks[0] > 1.8  # and it ran again after resume
        m = daemons.ctr("task", "metrics", "pp1").stdout.decode()
        usage = re.search(r"memory\.(?:usage_in_bytes|usage\.usage)\s+(\d+)", m)
        # the VM's memory, charged to the pod (libvirt's QEMU too: the driver moves it)
        assert usage and int(usage.group(1)) > 32 << 20, m
    finally:
        cleanup(daemons, "pp1")


def test_back_to_back_runs_leave_nothing(daemons, no_leftovers):
    for i in range(20):
        res = ctr_run(daemons, f"loop{i}", "true")
        assert res.returncode == 0, (i, res.stderr.decode())
    assert not state_left(runtime_roots(daemons))


def test_systemd_cgroup_form(daemons, no_leftovers):
    """--runc-systemd-cgroup: the shim passes --systemd-cgroup and slice:prefix:name."""
    import os

    flags = ("-d", "--runc-systemd-cgroup", "--cgroup", "system.slice:e2e:sd1")
    res = ctr_run(daemons, "sd1", "sleep", "1000", flags=flags)
    assert res.returncode == 0, res.stderr.decode()
    root = "/sys/fs/cgroup"
    d = (f"{root}/system.slice/e2e-sd1.scope" if os.path.exists(f"{root}/cgroup.controllers")
         else f"{root}/memory/system.slice/e2e-sd1.scope")  # fmt: skip
    try:
        with open(f"{d}/cgroup.procs") as f:
            assert len(f.read().split()) >= 3  # monitor, proxy and QEMU
    finally:
        cleanup(daemons, "sd1")
    assert not os.path.exists(d)


def test_kill_after_exit_is_already_finished(daemons, no_leftovers):
    """CRI kills a container after its exit event, before deleting it.  The shim treats the
    runtime's error as "already exited" only if it reads like runc's ("container not
    running"); any other text is "unknown error after kill", which CRI retries forever."""
    cid = "exited1"
    res = ctr_run(daemons, cid, "true", flags=("-d",))
    assert res.returncode == 0, res.stderr.decode()
    try:
        wait_status(daemons, cid, "STOPPED")
        res = daemons.ctr("task", "kill", "-s", "KILL", cid)
        err = res.stderr.decode()
        assert "unknown error" not in err, err
        assert res.returncode == 0 or "process already finished" in err, err
        res = daemons.ctr("task", "kill", "--all", "-s", "KILL", cid)  # runc: no error
        assert res.returncode == 0, res.stderr.decode()
        res = daemons.ctr("task", "delete", cid)
        assert res.returncode == 0, res.stderr.decode()
    finally:
        cleanup(daemons, cid)


# busybox's tail keeps a growing buffer for a "line" that never ends: it soon fills any limit
OOM_CMD = ("tail", "/dev/zero")


@pytest.mark.parametrize("oom", [True, False], ids=["oom-killed", "killed-otherwise"])
def test_oom_in_the_guest_is_a_tasks_oom_event(daemons, no_leftovers, oom):
    """The shim publishes /tasks/oom from the pod's host cgroup, where the proxy makes the
    guest's OOM kill known; a container killed otherwise (137 too) gets none."""
    cid = f"oom-{oom}".lower()
    events = subprocess.Popen(
        ["ctr", "-a", daemons.ctd_sock, "-n", daemons.ns, "events"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        cmd = OOM_CMD if oom else ("sh", "-c", 'sh -c "kill -9 \\$\\$"; exit $?')
        res = ctr_run(daemons, cid, *cmd, flags=("--rm", "--memory-limit", str(48 << 20)))
        assert res.returncode == 137, res.stderr.decode()
        time.sleep(1)
    finally:
        events.terminate()
        out, _ = events.communicate(timeout=30)
    lines = [ln for ln in out.splitlines() if f'"{cid}"' in ln or f"id:{cid} " in ln or cid in ln]
    assert any("/tasks/exit" in ln for ln in lines), out
    assert any("/tasks/oom" in ln for ln in lines) is oom, out
