"""runc compatibility and fault handling in a real guest (issue 9): exec --cap, CPU settings
on both sides of the VM, a network namespace with only lo, the smallest memory limit."""

from __future__ import annotations

import json
import os

import pytest

from agent.tables import CAPS
from hyperpy.oci.spec import default_spec
from hyperpy.preflight import MIN_MEMORY_LIMIT
from tests.conftest import hyperpy, needs_artifacts
from tests.vm.test_isolation import facts, run_spec
from tests.vm.test_lifecycle import create

pytestmark = [pytest.mark.vm, needs_artifacts]

CAP_PROBE = "for s in CapEff CapPrm CapBnd CapInh CapAmb; do grep ^$s: /proc/self/status; done"


def mask(names: list[str]) -> int:
    return sum(1 << CAPS[n] for n in names)


def caps_of(output: bytes) -> dict[str, int]:
    return {k: int(v, 16) for k, v in (line.split(":\t") for line in output.decode().split("\n")
                                       if line.startswith("Cap"))}  # fmt: skip


def started(root, bundle, cid, args, **overrides) -> str:
    b = bundle(args, **overrides)
    create(root, b, cid)
    hyperpy(root, "start", cid, check=True)
    return b


def test_exec_cap_is_applied_as_runc_applies_it(root, bundle):
    started(root, bundle, "cap1", ["sleep", "1000"])
    try:
        caps = default_spec()["process"]["capabilities"]
        plain = caps_of(hyperpy(root, "exec", "cap1", "sh", "-c", CAP_PROBE, check=True).stdout)
        # exec's process is config.json's: its capabilities too (runc's getProcess)
        assert plain["CapEff"] == mask(caps["effective"]), plain
        assert plain["CapBnd"] == mask(caps["bounding"])
        res = hyperpy(root, "exec", "--cap", "CAP_SYS_ADMIN", "cap1", "sh", "-c", CAP_PROBE)
        assert res.returncode == 0, res.stderr.decode()
        added = caps_of(res.stdout)
        admin = 1 << CAPS["CAP_SYS_ADMIN"]
        for s in ("CapEff", "CapPrm", "CapBnd"):
            assert added[s] == plain[s] | admin, (s, added, plain)
        assert added["CapAmb"] == 0 and added["CapInh"] == plain["CapInh"]
        bad = hyperpy(root, "exec", "--cap", "CAP_FLY", "cap1", "true")
        assert bad.returncode == 2 and b"--cap 'CAP_FLY'" in bad.stderr
    finally:
        hyperpy(root, "delete", "--force", "cap1", check=True)


def test_exec_cap_reaches_a_non_root_user_through_ambient(root, bundle):
    """With inheritable capabilities in the spec, runc adds --cap to ambient too, so a
    non-root exec keeps it across execve."""
    started(root, bundle, "cap2", ["sleep", "1000"])
    spec_caps = {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"],
                 "inheritable": ["CAP_KILL", "CAP_NET_RAW"], "ambient": []}  # fmt: skip
    try:
        st = json.loads(hyperpy(root, "state", "cap2", check=True).stdout)
        cfg = os.path.join(st["bundle"], "config.json")
        with open(cfg) as f:
            spec = json.load(f)
        spec["process"]["capabilities"] = spec_caps  # exec reads config.json afresh, as runc
        with open(cfg, "w") as f:
            json.dump(spec, f)
        res = hyperpy(root, "exec", "--user", "1000:1000", "--cap", "CAP_NET_RAW", "cap2",
                      "sh", "-c", CAP_PROBE)  # fmt: skip
        assert res.returncode == 0, res.stderr.decode()
        got = caps_of(res.stdout)
        raw = 1 << CAPS["CAP_NET_RAW"]
        assert got["CapAmb"] == raw and got["CapEff"] == raw, got
    finally:
        hyperpy(root, "delete", "--force", "cap2", check=True)


def _host_cgroup_file(pid: int, controller: str, name: str) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            if controller in ctrls.split(",") or (not ctrls and os.path.exists(
                    "/sys/fs/cgroup/cgroup.controllers")):  # fmt: skip
                base = f"/sys/fs/cgroup/{controller}" if ctrls else "/sys/fs/cgroup"
                with open(f"{base}{path}/{name}") as g:
                    return g.read().strip()
    raise AssertionError(f"pid {pid} has no {controller} cgroup")


def test_cpuset_quota_shares_on_both_sides(root, bundle):
    """runtime-tools' linux_cgroups_relative_cpus: cpus "0-1" with half a CPU of quota used
    to size the VM at 1 vCPU, and the guest refused the cpuset."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("this host has one CPU; the case needs two")
    rel = f"hyperpy-test/cpus-{os.getpid()}"
    cpu = {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"}
    b = bundle(["sleep", "1000"])
    spec = json.load(open(f"{b}/config.json"))
    spec["linux"]["cgroupsPath"] = rel  # relative, as in the runtime-tools test
    spec["linux"]["resources"] = {"cpu": cpu}
    json.dump(spec, open(f"{b}/config.json", "w"))
    pid = create(root, b, "cpus1")
    try:
        hyperpy(root, "start", "cpus1", check=True)
        probe = ("echo cpus=$(cat /sys/fs/cgroup/cpuset.cpus); echo mems=$(cat "
                 "/sys/fs/cgroup/cpuset.mems); echo max=$(cat /sys/fs/cgroup/cpu.max); "
                 "echo nproc=$(nproc)")  # fmt: skip
        f = facts(hyperpy(root, "exec", "cpus1", "sh", "-c", probe, check=True).stdout)
        assert f == {"cpus": "0-1", "mems": "0", "max": "50000 100000", "nproc": "2"}, f
        # the host cgroup of the task's pid, where the vCPU threads run, has the same values
        assert _host_cgroup_file(pid, "cpuset", "cpuset.cpus") == "0-1"
        assert _host_cgroup_file(pid, "cpuset", "cpuset.mems") == "0"
        if not os.path.exists("/sys/fs/cgroup/cgroup.controllers"):  # v1, this host
            assert _host_cgroup_file(pid, "cpu", "cpu.cfs_quota_us") == "50000"
            assert _host_cgroup_file(pid, "cpu", "cpu.cfs_period_us") == "100000"
            assert _host_cgroup_file(pid, "cpu", "cpu.shares") == "1024"
        st = json.loads(hyperpy(root, "state", "cpus1", check=True).stdout)
        assert st["status"] == "running"
    finally:
        hyperpy(root, "delete", "--force", "cpus1", check=True)
    assert not os.path.exists(f"/sys/fs/cgroup/cpu/{rel}")


def test_own_network_namespace_shows_only_lo(root, bundle):
    """The guest kernel used to give every network namespace a sit0 (IPV6_SIT)."""
    res = run_spec(root, bundle, "net1", "ls /sys/class/net; cat /proc/net/dev",
                   lambda spec: None)  # fmt: skip
    assert res.returncode == 0, res.stderr.decode()
    lines = res.stdout.decode().split("\n")
    assert lines[0] == "lo", res.stdout
    devices = [ln.split(":")[0].strip() for ln in lines[1:] if ":" in ln]
    assert devices == ["lo"], res.stdout


def test_the_smallest_memory_limit_accepted_runs(root, bundle):
    """preflight.MIN_MEMORY_LIMIT is enough for the container's init to start and exec."""

    def edit(spec):
        spec["linux"]["resources"] = {"memory": {"limit": MIN_MEMORY_LIMIT}}

    res = run_spec(root, bundle, "mem1", "cat /sys/fs/cgroup/memory.max", edit)
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout.decode().strip() == str(MIN_MEMORY_LIMIT)


def test_exec_input_is_checked_before_it_reaches_the_guest(root, bundle, tmp_path):
    """exec's --pid-file, --console-socket and arguments fail with the flag named, and start
    nothing in the guest (issue 9, item 7)."""
    started(root, bundle, "exin1", ["sleep", "1000"])
    try:
        res = hyperpy(root, "exec", "--pid-file", str(tmp_path / "nodir" / "p"), "exin1", "true")
        assert res.returncode == 2 and b"--pid-file" in res.stderr, res.stderr
        # (one argument above MAX_ARG_STRLEN cannot even reach us: the host's execve too)
        res = hyperpy(root, "exec", "exin1", "echo", *["x" * 120000] * 10)
        assert res.returncode == 2, res.stderr
        assert b"exec's arguments#/args/" in res.stderr and b"frame limit" in res.stderr
        res = hyperpy(root, "exec", "-t", "-d", "--console-socket", str(tmp_path / "none.sock"),
                      "exin1", "sh")  # fmt: skip
        assert res.returncode == 2 and b"--console-socket" in res.stderr, res.stderr
        res = hyperpy(root, "exec", "--user", "nobody", "exin1", "true")
        assert res.returncode == 2 and b"--user" in res.stderr, res.stderr
        ps = json.loads(hyperpy(root, "ps", "--format", "json", "exin1", check=True).stdout)
        assert len(ps) == 1  # only init's proxy: no exec got as far as a process
    finally:
        hyperpy(root, "delete", "--force", "exin1", check=True)
