"""`update` resizes the pod's VM (docs/resize.md), in real guests under TCG, on both drivers:
the guest's MemTotal and online CPUs follow the container's limits; a process can use what
it was given past the old size and is OOM-killed past the new one; a resize past the VM's
maximum is refused and changes nothing. With the qemu driver the pod comes from a template
(the session's), with libvirt it boots cold."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import hyperpy, needs_artifacts
from tests.vm.test_lifecycle import create, status_of

pytestmark = [pytest.mark.vm, needs_artifacts, pytest.mark.usefixtures("driver")]

MIB = 1 << 20
TWO_CPUS = (os.cpu_count() or 1) >= 2


def sized_bundle(bundle, limit_mb: int) -> str:
    """A sleeping container with a memory limit and a 1 GiB tmpfs at /big (what it writes
    there is charged to its cgroup: the test's way to use memory with busybox)."""
    b = bundle(["sleep", "1000"])
    with open(f"{b}/config.json") as f:
        spec = json.load(f)
    spec["linux"]["resources"] = {"memory": {"limit": limit_mb * MIB}}
    spec["mounts"].append({"destination": "/big", "type": "tmpfs", "source": "tmpfs",
                           "options": ["size=1g"]})  # fmt: skip
    with open(f"{b}/config.json", "w") as f:
        json.dump(spec, f)
    return b


def guest(root: str, cid: str) -> dict:
    """What the container sees: MemTotal (MiB), nproc, its memory.max, the online CPUs."""
    script = ("grep MemTotal /proc/meminfo; nproc; cat /sys/fs/cgroup/memory.max; "
              "cat /sys/devices/system/cpu/online")  # fmt: skip
    out = hyperpy(root, "exec", cid, "sh", "-c", script, check=True).stdout.decode().split("\n")
    return {"mem_total_mb": int(out[0].split()[1]) // 1024, "nproc": int(out[1]),
            "limit": out[2], "online": out[3]}  # fmt: skip


def fill(root: str, cid: str, mb: int) -> int:
    """Write ``mb`` MiB to the container's tmpfs, then free it; dd's status (137: OOM-killed)."""
    script = f"dd if=/dev/zero of=/big/f bs=1M count={mb} 2>/dev/null; s=$?; rm -f /big/f; exit $s"
    return hyperpy(root, "exec", cid, "sh", "-c", script).returncode


def test_update_grows_and_shrinks_the_vm(root, bundle, driver):
    create(root, sized_bundle(bundle, 64), "rs1")
    hyperpy(root, "start", "rs1", check=True)
    before = guest(root, "rs1")
    # the pod's VM is [vm] memory_mb (256; a 64 MiB limit needs less), less the guest's own
    assert 180 <= before["mem_total_mb"] <= 256, before
    assert before["nproc"] == 1 and before["online"] == "0"
    assert fill(root, "rs1", 200) == 137  # past its limit: the guest OOM-kills dd

    quota = ["--cpu-quota", "200000", "--cpu-period", "100000"] if TWO_CPUS else []
    hyperpy(root, "update", "--memory", "600m", *quota, "rs1", check=True)
    grown = guest(root, "rs1")
    # 600 MiB + [vm] overhead_mb (160) = a 760 MiB VM: the container sees all it was given
    assert 600 <= grown["mem_total_mb"] <= 760, grown
    assert grown["limit"] == str(600 * MIB)
    if TWO_CPUS:
        assert grown["nproc"] == 2 and grown["online"] == "0-1", grown
    assert fill(root, "rs1", 400) == 0  # past the old limit and the old VM

    state = status_of(root, "rs1")
    assert state["vm"]["memory_mb"] == 760 and state["vm"]["vcpus"] == (2 if TWO_CPUS else 1)
    stats = json.loads(hyperpy(root, "events", "--stats", "rs1", check=True).stdout)
    assert stats["data"]["vm"] == state["vm"]

    quota = ["--cpu-quota", "50000"] if TWO_CPUS else []
    hyperpy(root, "update", "--memory", "100m", *quota, "rs1", check=True)
    shrunk = guest(root, "rs1")
    assert shrunk["mem_total_mb"] <= 260 and shrunk["limit"] == str(100 * MIB), shrunk
    assert shrunk["nproc"] == 1 and shrunk["online"] == "0", shrunk
    assert fill(root, "rs1", 150) == 137  # past the new limit: OOM-killed again
    assert status_of(root, "rs1")["vm"]["memory_mb"] == 260
    if driver == "qemu":  # the session's templates: the resized VM was restored from one
        with open(os.path.join(root, "rs1", "monitor.log")) as f:
            assert "restored from template" in f.read()
    hyperpy(root, "delete", "--force", "rs1", check=True)


def test_a_resize_past_the_maximum_is_refused_and_changes_nothing(root, bundle, vm_config,
                                                                  monkeypatch):  # fmt: skip
    monkeypatch.setenv("HYPERPY_CONFIG", vm_config(max_memory_mb=512, max_vcpus=1))
    create(root, sized_bundle(bundle, 64), "rs2")
    hyperpy(root, "start", "rs2", check=True)
    before = guest(root, "rs2")
    res = hyperpy(root, "update", "--memory", "1g", "rs2")
    err = res.stderr.decode()
    assert res.returncode == 2, err
    assert "LinuxResources#/memory/limit" in err and "max_memory_mb" in err, err
    assert "Traceback" not in err
    res = hyperpy(root, "update", "--cpu-quota", "200000", "--cpu-period", "100000", "rs2")
    assert res.returncode == 2 and "max_vcpus" in res.stderr.decode(), res.stderr
    assert guest(root, "rs2") == before  # the container as it was
    # what fits still does: up to the VM's maximum
    hyperpy(root, "update", "--memory", "300m", "rs2", check=True)
    assert guest(root, "rs2")["limit"] == str(300 * MIB)
    hyperpy(root, "delete", "--force", "rs2", check=True)


def test_a_template_pods_shrink_keeps_qemu_log_bounded(root, bundle, driver):
    """QEMU 7.2 cannot give a restored pod's ballooned pages back (its template's memfd is
    sealed: docs/resize.md) and prints one error per page: shrinking 1.5 GiB is ~25 MiB of
    it, which qemu.log's ring (hyperpy/vm/console.py) keeps to its bound."""
    from hyperpy.vm.console import QEMU_LOG_MAX

    if driver != "qemu":
        pytest.skip("libvirt's pods boot cold: their balloon gives pages back")
    create(root, sized_bundle(bundle, 64), "rs3")
    hyperpy(root, "start", "rs3", check=True)
    with open(os.path.join(root, "rs3", "monitor.log")) as f:
        assert "restored from template" in f.read()
    hyperpy(root, "update", "--memory", "1700m", "rs3", check=True)
    assert guest(root, "rs3")["mem_total_mb"] >= 1700
    hyperpy(root, "update", "--memory", "64m", "rs3", check=True)
    assert guest(root, "rs3")["mem_total_mb"] <= 256  # the guest gave them up all the same
    logs = [os.path.join(root, "rs3", n) for n in ("qemu.log", "qemu.log.1")]
    sizes = [os.path.getsize(p) for p in logs if os.path.exists(p)]
    assert sum(sizes) <= QEMU_LOG_MAX, sizes
    with open(logs[0], "rb") as f:
        assert b"ram_block_discard_range" in f.read()  # it did print, and the log kept it
    assert hyperpy(root, "state", "rs3").returncode == 0
    hyperpy(root, "delete", "--force", "rs3", check=True)
