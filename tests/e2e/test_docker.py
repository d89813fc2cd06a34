"""dockerd with `--add-runtime hyperpy=...`: everyday docker commands on hyperpy."""

from __future__ import annotations

import os
import time

import pytest

from tests.conftest import processes_under
from tests.e2e.conftest import DOCKER_IMAGE, run_in_pty, runtime_roots

pytestmark = pytest.mark.e2e

RUN = ("run", "--runtime", "hyperpy", "--network", "none")


def test_run_echo_and_exit_code(daemons, no_leftovers):
    res = daemons.docker(*RUN, "--rm", DOCKER_IMAGE, "sh", "-c", "echo hi; uname -r")
    assert res.returncode == 0, res.stderr.decode()
    out = res.stdout.decode().splitlines()
    assert out[0] == "hi" and out[1].endswith("-hyperpy")
    res = daemons.docker(*RUN, "--rm", DOCKER_IMAGE, "sh", "-c", "exit 42")
    assert res.returncode == 42, res.stderr.decode()


def test_stdin(daemons, no_leftovers):
    data = b"".join(b"line %d\n" % i for i in range(5000))
    res = daemons.docker(*RUN, "--rm", "-i", DOCKER_IMAGE, "sh", "-c", "cat; echo end", input=data)
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout == data + b"end\n"


def test_tty(daemons, no_leftovers):
    rc, out = run_in_pty(
        [
            "docker",
            "-H",
            f"unix://{daemons.docker_sock}",
            *RUN,
            "--rm",
            "-t",
            DOCKER_IMAGE,
            "sh",
            "-c",
            "tty; exit 3",
        ]  # fmt: skip
    )
    assert rc == 3, out
    assert b"/dev/pts/" in out, out


def test_detached_lifecycle(daemons, no_leftovers):
    name = "life"
    script = 'echo started; trap "echo stopping; exit 0" TERM; while true; do sleep 0.1; done'
    res = daemons.docker(*RUN, "-d", "--name", name, DOCKER_IMAGE, "sh", "-c", script)
    assert res.returncode == 0, res.stderr.decode()
    try:
        r = daemons.docker("exec", name, "sh", "-c", "echo from exec; exit 6")
        assert r.returncode == 6 and r.stdout == b"from exec\n", r.stderr.decode()
        rc, out = run_in_pty(
            [
                "docker",
                "-H",
                f"unix://{daemons.docker_sock}",
                "exec",
                "-it",
                name,
                "sh",
                "-c",
                "tty",
            ]  # fmt: skip
        )
        assert rc == 0 and b"/dev/pts/" in out, out
        assert b"started" in daemons.docker("logs", name).stdout
        # the leak checks look where dockerd keeps hyperpy's state: they must see this one
        docker_roots = runtime_roots(daemons)[1:]
        assert docker_roots and processes_under(*docker_roots), docker_roots
        top = daemons.docker("top", name)
        assert top.returncode == 0 and b"hyperpy.proxy" in top.stdout, top.stderr.decode()
        stats = daemons.docker("stats", "--no-stream", "--format", "{{.MemUsage}}", name)
        assert stats.returncode == 0, stats.stderr.decode()
        assert not stats.stdout.startswith(b"0B"), stats.stdout  # the VM's real memory
        assert daemons.docker("pause", name).returncode == 0
        status = daemons.docker("inspect", "-f", "{{.State.Status}}", name).stdout.strip()
        assert status == b"paused"
        assert daemons.docker("unpause", name).returncode == 0
        # docker update resizes the VM (docs/resize.md): past its 256 MiB boot size, and to
        # two vCPUs where the host has them; the container sees what it was given
        cpus = ["--cpus", "2"] if (os.cpu_count() or 1) >= 2 else []
        r = daemons.docker("update", "--memory", "600m", "--memory-swap", "600m", *cpus, name)
        assert r.returncode == 0, r.stderr.decode()
        r = daemons.docker(
            "exec", name, "sh", "-c",
            "cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/memory.max; "
            "grep MemTotal /proc/meminfo; nproc",
        )  # fmt: skip
        limit, memtotal, nproc = r.stdout.decode().strip().split("\n")
        assert limit == str(600 << 20), (r.stdout, r.stderr)
        assert int(memtotal.split()[1]) >= 600 << 10, memtotal
        assert int(nproc) == (2 if cpus else 1)
        start = time.monotonic()
        assert daemons.docker("stop", name).returncode == 0
        assert time.monotonic() - start < 8  # the TERM trap ended it, no 10 s KILL wait
        logs = daemons.docker("logs", name).stdout
        assert b"stopping" in logs
        code = daemons.docker("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip()
        assert code == b"0"
    finally:
        daemons.docker("rm", "-f", name)


def test_stop_escalates_to_kill_and_kill_and_rm_force(daemons, no_leftovers):
    res = daemons.docker(*RUN, "-d", "--name", "stubborn", DOCKER_IMAGE, "sh", "-c",
                         "trap '' TERM; while true; do sleep 0.1; done")  # fmt: skip
    assert res.returncode == 0, res.stderr.decode()
    try:
        time.sleep(0.5)
        assert daemons.docker("stop", "-t", "2", "stubborn").returncode == 0
        code = daemons.docker("inspect", "-f", "{{.State.ExitCode}}", "stubborn").stdout.strip()
        assert code == b"137"
    finally:
        daemons.docker("rm", "-f", "stubborn")
    res = daemons.docker(*RUN, "-d", "--name", "victim", DOCKER_IMAGE, "sleep", "1000")
    assert res.returncode == 0, res.stderr.decode()
    assert daemons.docker("kill", "victim").returncode == 0
    code = daemons.docker("inspect", "-f", "{{.State.ExitCode}}", "victim").stdout.strip()
    assert code == b"137"
    assert daemons.docker("rm", "victim").returncode == 0
    res = daemons.docker(*RUN, "-d", "--name", "forced", DOCKER_IMAGE, "sleep", "1000")
    assert res.returncode == 0
    assert daemons.docker("rm", "-f", "forced").returncode == 0
    assert daemons.docker("ps", "-aq", "--filter", "name=forced").stdout.strip() == b""


@pytest.mark.parametrize("oom", [True, False], ids=["oom-killed", "killed-otherwise"])
def test_oom_killed_in_the_guest_is_state_oomkilled(daemons, no_leftovers, oom):
    name = f"oom-{oom}".lower()
    # busybox's tail keeps a growing buffer for a "line" that never ends
    cmd = ["tail", "/dev/zero"] if oom else ["sh", "-c", 'sh -c "kill -9 \\$\\$"; exit $?']
    res = daemons.docker(*RUN, "--name", name, "-m", "48m", DOCKER_IMAGE, *cmd, timeout=180)
    try:
        assert res.returncode == 137, res.stderr.decode()
        state = daemons.docker("inspect", "-f", "{{.State.OOMKilled}} {{.State.ExitCode}}", name)
        assert state.stdout.decode().split() == [str(oom).lower(), "137"], state
    finally:
        daemons.docker("rm", "-f", name)


def test_diff_cp_and_commit_see_what_the_container_wrote(daemons, no_leftovers, tmp_path):
    """The root is written through (``[vm] files = "faithful"``): docker's own view of the
    container's layer, from the host, is what the container did, as under runc."""
    if daemons.driver == "libvirt":
        pytest.skip("libvirt's QEMU is an unprivileged user: its files are strict (docs/files.md)")
    name, image = "writer", "hyperpy-committed:test"
    script = "mkdir -p /data && echo made-in-guest > /data/new.txt && touch /ready; sleep 1000"
    res = daemons.docker(*RUN, "-d", "--name", name, DOCKER_IMAGE, "sh", "-c", script)
    assert res.returncode == 0, res.stderr
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if daemons.docker("exec", name, "test", "-e", "/ready").returncode == 0:
                break
            time.sleep(0.5)
        diff = daemons.docker("diff", name).stdout.decode().split("\n")
        assert "A /data/new.txt" in diff and "A /ready" in diff, diff
        out = tmp_path / "out"
        assert daemons.docker("cp", f"{name}:/data/new.txt", str(out)).returncode == 0
        assert out.read_text() == "made-in-guest\n"
        into = tmp_path / "into.txt"
        into.write_text("from the host\n")
        assert daemons.docker("cp", str(into), f"{name}:/data/into.txt").returncode == 0
        seen = daemons.docker("exec", name, "cat", "/data/into.txt").stdout
        assert seen == b"from the host\n"
        assert daemons.docker("commit", name, image).returncode == 0
    finally:
        daemons.docker("rm", "-f", name)
    try:
        for runtime in ("runc", "hyperpy"):
            res = daemons.docker("run", "--rm", "--runtime", runtime, "--network", "none",
                                 image, "cat", "/data/new.txt", "/data/into.txt")  # fmt: skip
            assert res.stdout == b"made-in-guest\nfrom the host\n", (runtime, res.stderr)
    finally:
        daemons.docker("rmi", "-f", image)
