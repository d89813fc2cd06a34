"""Resolving cgroupsPath on the host, as runc does for cgroupfs and systemd forms; CPU settings
written to a real cgroup of this host."""

from __future__ import annotations

import os
import subprocess

import pytest

from hyperpy.errors import CgroupError, SpecError
from hyperpy.hostcgroup import HostCgroup, is_v2, relative_path, systemd_path


def test_cgroupfs_paths() -> None:
    assert relative_path("/default/abc", "abc", False) == "default/abc"
    assert relative_path("kubepods/pod1/c", "c", False) == "kubepods/pod1/c"
    assert relative_path("", "abc", False) == "hyperpy/abc"
    assert relative_path("/a/../../b", "x", False) == "b"  # cannot climb above the root
    # without --systemd-cgroup, colons are part of the path, as runc takes it (containerd's
    # CRI writes this form for a .slice parent when it was not told to use systemd)
    cri = "kubepods-burstable-pod1.slice:cri-containerd:c"
    assert relative_path(cri, "c", False) == cri
    assert relative_path(cri, "c", True).endswith(
        "/kubepods-burstable-pod1.slice/cri-containerd-c.scope"
    )


@pytest.mark.parametrize(
    "spec,path",
    [
        ("system.slice:docker:abc", "system.slice/docker-abc.scope"),
        ("kubepods-besteffort-pod1.slice:cri-containerd:c1",
         "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/"
         "cri-containerd-c1.scope"),
        (":hyperpy:x", "system.slice/hyperpy-x.scope"),
        ("-.slice:p:n", "p-n.scope"),
    ],
)  # fmt: skip
def test_systemd_paths(spec: str, path: str) -> None:
    assert systemd_path(spec) == path


@pytest.mark.parametrize("spec", ["abc", "a:b", "system:docker:x"])
def test_bad_systemd_paths_name_the_field(spec: str) -> None:
    with pytest.raises(SpecError) as err:
        systemd_path(spec)
    assert err.value.pointer == "/linux/cgroupsPath"


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


@pytest.fixture
def pod_cgroup():
    """A real cgroup on this host (root and a writable hierarchy needed), removed after."""
    if os.geteuid() != 0:
        pytest.skip("making a cgroup needs root")
    cg = HostCgroup(f"hyperpy-unit/cpu-{os.getpid()}")
    cg.create()
    yield cg
    cg.remove()


def test_cpu_settings_reach_the_host_cgroup(pod_cgroup):
    """runtime-tools' linux_cgroups_cpus reads these from the host cgroup of the task's pid:
    they must be the spec's, where QEMU's vCPU threads run (item 8)."""
    cg = pod_cgroup
    cg.set_cpu({"shares": 2048, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"})
    if is_v2():
        d = cg.dirs[0]
        if os.path.exists(os.path.join(d, "cpu.max")):
            assert _read(os.path.join(d, "cpu.max")) == "50000 100000"
        if os.path.exists(os.path.join(d, "cpuset.cpus")):
            assert _read(os.path.join(d, "cpuset.cpus")) == "0"
    else:
        cpu = next(d for d in cg.dirs if "/cpu/" in d)
        assert _read(f"{cpu}/cpu.shares") == "2048"
        assert _read(f"{cpu}/cpu.cfs_quota_us") == "50000"
        assert _read(f"{cpu}/cpu.cfs_period_us") == "100000"
        cpuset = next(d for d in cg.dirs if "/cpuset/" in d)
        assert _read(f"{cpuset}/cpuset.cpus") == "0" and _read(f"{cpuset}/cpuset.mems") == "0"
    # a process moved in runs only on the cpuset's CPUs, its threads too
    p = subprocess.Popen(["sleep", "30"])
    try:
        cg.add(p.pid)
        assert os.sched_getaffinity(p.pid) == {0}
    finally:
        p.kill()
        p.wait()


def test_the_cpuset_is_set_when_the_cgroup_is_made(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("making a cgroup needs root")
    cg = HostCgroup(f"hyperpy-unit/cpuset-{os.getpid()}")
    cg.create(cpu={"cpus": "0", "quota": 1000})
    try:
        cpuset = [d for d in cg.dirs if "/cpuset/" in d] or [cg.dirs[0]]
        if os.path.exists(f"{cpuset[0]}/cpuset.cpus"):
            assert _read(f"{cpuset[0]}/cpuset.cpus") == "0"
        cpu = [d for d in cg.dirs if "/cpu/" in d]
        if cpu:  # the quota waits for set_cpu, after the boot
            assert _read(f"{cpu[0]}/cpu.cfs_quota_us") == "-1"
    finally:
        cg.remove()


def test_a_cpu_value_the_host_refuses_names_the_file(pod_cgroup):
    with pytest.raises(CgroupError, match="cpu"):
        pod_cgroup.set_cpu({"quota": 50000, "period": 1})  # below the kernel's 1 ms minimum
