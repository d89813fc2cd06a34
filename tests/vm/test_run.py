"""`hyperpy run` in real QEMU guests under TCG: stdio, exit status, errors, no leftovers."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.conftest import HYPERPY, hyperpy, needs_artifacts

# on both hypervisor drivers (tests/vm/conftest.py)
pytestmark = [pytest.mark.vm, needs_artifacts, pytest.mark.usefixtures("driver")]


def test_echo_runs_in_our_kernel(root, bundle):
    b = bundle(["sh", "-c", "echo hello; uname -r"])
    res = hyperpy(root, "run", "--bundle", b, "echo1")
    assert res.returncode == 0, res.stderr.decode()
    lines = res.stdout.decode().splitlines()
    assert lines[0] == "hello"
    assert lines[1] != os.uname().release  # the guest's kernel, not the host's


@pytest.mark.parametrize("script,status", [("exit 0", 0), ("exit 7", 7)])
def test_exit_status(root, bundle, script, status):
    res = hyperpy(root, "run", "--bundle", bundle(["sh", "-c", script]), f"exit{status}")
    assert res.returncode == status, res.stderr.decode()


def test_exit_status_when_killed(root, bundle):
    # The container's init is pid 1 of its pid namespace: a SIGKILL from inside the namespace
    # does not reach it (as under runc), so it comes from the host side: `hyperpy kill`.
    b = bundle(["sh", "-c", "echo ready; exec sleep 1000"])
    p = subprocess.Popen(
        [HYPERPY, "--root", root, "run", "--bundle", b, "killed1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert p.stdout is not None
    assert p.stdout.readline() == b"ready\n"
    hyperpy(root, "kill", "killed1", "KILL", check=True)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 137, err.decode()


def test_one_mib_through_stdin_and_stdout(root, bundle):
    data = os.urandom(1 << 20)
    res = hyperpy(root, "run", "--bundle", bundle(["cat"]), "cat1", input=data)
    assert res.returncode == 0, res.stderr.decode()
    assert len(res.stdout) == len(data)
    assert res.stdout == data


def test_stderr_is_kept_apart(root, bundle):
    b = bundle(["sh", "-c", "echo out; echo err >&2; echo out2"])
    res = hyperpy(root, "run", "--bundle", b, "err1")
    assert res.returncode == 0
    assert res.stdout == b"out\nout2\n"
    assert res.stderr == b"err\n"


def test_sigterm_to_run_reaches_the_container(root, bundle):
    b = bundle(
        [
            "sh",
            "-c",
            "trap 'echo got-term; exit 3' TERM; echo ready; " "while true; do sleep 0.1; done",
        ]
    )
    p = subprocess.Popen(
        [HYPERPY, "--root", root, "run", "--bundle", b, "sig1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert p.stdout is not None
    assert p.stdout.readline() == b"ready\n"
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert b"got-term" in out, err.decode()
    assert p.returncode == 3


def test_kernel_panic_fails_fast_with_console_tail(root, bundle, vm_config):
    cfg = vm_config(kernel_params="rdinit=/does-not-exist", verbose_console=True)
    env = dict(os.environ, HYPERPY_CONFIG=cfg)
    start = time.monotonic()
    res = hyperpy(root, "run", "--bundle", bundle(["true"]), "panic1", env=env)
    assert res.returncode == 7
    err = res.stderr.decode()
    assert "panicked" in err and "Kernel panic" in err, err
    assert time.monotonic() - start < 50  # failed on the panic, not the 60 s boot timeout


def test_boot_timeout_names_console_tail(root, bundle, vm_config):
    cfg = vm_config(boot_timeout=0.3, verbose_console=True)
    env = dict(os.environ, HYPERPY_CONFIG=cfg)
    res = hyperpy(root, "run", "--bundle", bundle(["true"]), "timeout1", env=env)
    assert res.returncode == 7
    err = res.stderr.decode()
    assert "did not answer within" in err and "console log" in err, err


def test_bad_bundle_leaves_nothing(root, tmp_path):
    res = hyperpy(root, "run", "--bundle", str(tmp_path / "nope"), "bad1")
    assert res.returncode == 2  # a usage error: the --bundle flag names nothing
    assert "config.json" in res.stderr.decode()


def test_invalid_config_names_the_field_and_leaves_nothing(root, bundle):
    import json

    b = bundle(["true"])
    spec = json.loads(open(f"{b}/config.json").read())
    spec["linux"]["namespaces"].append({"type": "nosuchns"})
    with open(f"{b}/config.json", "w") as f:
        json.dump(spec, f)
    res = hyperpy(root, "run", "--bundle", b, "bad2")
    assert res.returncode == 3
    err = res.stderr.decode()
    n = len(spec["linux"]["namespaces"]) - 1
    assert f"/linux/namespaces/{n}/type" in err and "nosuchns" in err, err


def test_guest_clock_follows_the_host(root, bundle):
    res = hyperpy(root, "run", "--bundle", bundle(["date", "+%s"]), "clock1")
    assert res.returncode == 0, res.stderr.decode()
    assert abs(int(res.stdout) - time.time()) < 60


def test_exec_failure_after_start_is_the_process_exit(root, bundle):
    # args[0] is found at create (as runc's create does); an exec that still fails after the
    # start gate (not a valid binary) is the process's: its stderr and exit status 127.
    b = bundle(["/notexec"])
    path = os.path.join(b, "rootfs", "notexec")
    with open(path, "w") as f:
        f.write("neither ELF nor a script\n")
    os.chmod(path, 0o755)
    res = hyperpy(root, "run", "--bundle", b, "noexec1")
    assert res.returncode == 127, res
    assert b"cannot execute '/notexec'" in res.stderr and b"Exec format error" in res.stderr
