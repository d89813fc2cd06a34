"""The guest agent's cgroup v2 handling (agent/cgroups.py, agent/resources.py).

Pure tests: the OCI resources → cgroup file conversion (runc's), cgroupsPath resolution, and
reading/writing against fake cgroup directories. Real tests: cgroups made on this machine's
cgroup v2 hierarchy under a private parent (never its root cgroup's settings); those that
need a controller skip when the hierarchy does not offer it (a hybrid v1/v2 host binds
memory, pids and cpu to v1).
"""

from __future__ import annotations

import errno
import os
import secrets
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

from agent import cgroups, resources
from agent.cgroups import cgroup_dir
from agent.errors import SetupError
from agent.resources import translate

R = "/linux/resources"
G = 1 << 30


def files(resources: dict) -> list[tuple[str, str]]:
    return [(name, value) for name, value, _ in translate(resources)]


def error_of(resources: dict) -> SetupError:
    with pytest.raises(SetupError) as err:
        translate(resources)
    return err.value


# --- translate: memory --------------------------------------------------------------------
def test_memory_limit_reservation_and_order() -> None:
    writes = translate({"memory": {"limit": G, "reservation": G // 2, "swap": 2 * G}})
    assert writes == [
        ("memory.swap.max", str(G), R + "/memory/swap"),  # runc: swap before memory.max
        ("memory.max", str(G), R + "/memory/limit"),
        ("memory.low", str(G // 2), R + "/memory/reservation"),
    ]


@pytest.mark.parametrize(
    "memory,expected",
    [
        ({"limit": -1}, [("memory.swap.max", "max"), ("memory.max", "max")]),
        ({"limit": 0}, []),  # 0 is "not set"
        ({"limit": G}, [("memory.max", str(G))]),  # swap absent: left alone
        ({"limit": G, "swap": 0}, [("memory.max", str(G))]),
        ({"limit": G, "swap": -1}, [("memory.swap.max", "max"), ("memory.max", str(G))]),
        ({"limit": G, "swap": G}, [("memory.swap.max", "0"), ("memory.max", str(G))]),
        ({"limit": G, "swap": 3 * G}, [("memory.swap.max", str(2 * G)), ("memory.max", str(G))]),
        ({"limit": -1, "swap": 5 * G}, [("memory.swap.max", str(5 * G)), ("memory.max", "max")]),
        ({"swap": -1}, [("memory.swap.max", "max")]),
        ({"reservation": -1}, [("memory.low", "max")]),
        ({"reservation": 0}, []),
    ],
)
def test_memory_swap_is_memory_plus_swap(memory: dict, expected: list) -> None:
    assert files({"memory": memory}) == expected


def test_memory_fields_without_a_v2_equivalent_are_ignored() -> None:
    memory = {"disableOOMKiller": True, "kernel": G, "kernelTCP": G, "swappiness": 10,
              "useHierarchy": True}  # fmt: skip
    assert translate({"memory": memory}) == []


@pytest.mark.parametrize(
    "memory,pointer,words",
    [
        ({"limit": G, "swap": G // 2}, "/memory/swap", "at least memory.limit"),
        ({"swap": G}, "/memory/swap", "without memory.limit"),
        ({"limit": -2}, "/memory/limit", "neither -1"),
        ({"limit": G, "swap": -5}, "/memory/swap", "neither -1"),
        ({"limit": "1G"}, "/memory/limit", "expected an integer"),
        ({"limit": True}, "/memory/limit", "expected an integer"),
        ({"reservation": 1.5}, "/memory/reservation", "expected an integer"),
    ],
)
def test_memory_errors_name_the_field(memory: dict, pointer: str, words: str) -> None:
    err = error_of({"memory": memory})
    assert err.pointer == R + pointer
    assert words in str(err)


# --- translate: cpu -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "shares,weight",
    [(2, 1), (1024, 39), (262144, 10000), (512, 20), (1, 1), (1 << 20, 10000)],
)
def test_shares_to_weight_is_runcs_formula(shares: int, weight: int) -> None:
    assert resources.shares_to_weight(shares) == weight
    assert files({"cpu": {"shares": shares}}) == [("cpu.weight", str(weight))]


def test_shares_zero_is_not_set() -> None:
    assert translate({"cpu": {"shares": 0}}) == []


@pytest.mark.parametrize(
    "cpu,value,pointer",
    [
        ({"quota": 50000, "period": 100000}, "50000 100000", "/cpu/quota"),
        ({"quota": 20000}, "20000 100000", "/cpu/quota"),  # period defaults to 100000
        ({"quota": -1, "period": 50000}, "max 50000", "/cpu/quota"),
        ({"period": 250000}, "max 250000", "/cpu/period"),
        ({"quota": -1}, "max 100000", "/cpu/quota"),
    ],
)
def test_cpu_max(cpu: dict, value: str, pointer: str) -> None:
    assert translate({"cpu": cpu}) == [("cpu.max", value, R + pointer)]


def test_cpu_quota_and_period_zero_are_not_set() -> None:
    assert translate({"cpu": {"quota": 0, "period": 0}}) == []


def test_cpu_all_fields_in_order() -> None:
    cpu = {"shares": 1024, "quota": 30000, "period": 60000, "burst": 10000, "cpus": "0-1",
           "mems": "0", "idle": 0}  # fmt: skip
    assert translate({"cpu": cpu}) == [
        ("cpu.idle", "0", R + "/cpu/idle"),
        ("cpu.weight", "39", R + "/cpu/shares"),
        ("cpu.max.burst", "10000", R + "/cpu/burst"),
        ("cpu.max", "30000 60000", R + "/cpu/quota"),
        ("cpuset.cpus", "0-1", R + "/cpu/cpus"),
        ("cpuset.mems", "0", R + "/cpu/mems"),
    ]


def test_idle_cgroup_gets_no_weight() -> None:
    assert files({"cpu": {"idle": 1, "shares": 1024}}) == [("cpu.idle", "1")]


def test_cpu_errors_name_the_field() -> None:
    err = error_of({"cpu": {"realtimeRuntime": 950000}})
    assert err.pointer == R + "/cpu/realtimeRuntime" and "real-time" in str(err)
    assert error_of({"cpu": {"cpus": 3}}).pointer == R + "/cpu/cpus"
    assert error_of({"cpu": {"shares": "1024"}}).pointer == R + "/cpu/shares"
    assert translate({"cpu": {"realtimeRuntime": 0, "realtimePeriod": 0}}) == []


# --- translate: pids, io, hugetlb, rdma ---------------------------------------------------
@pytest.mark.parametrize("limit,value", [(100, "100"), (1, "1"), (0, "max"), (-1, "max")])
def test_pids_max(limit: int, value: str) -> None:
    assert translate({"pids": {"limit": limit}}) == [("pids.max", value, R + "/pids/limit")]


def test_block_io() -> None:
    blk = {
        "weight": 500,
        "leafWeight": 300,  # no v2 equivalent
        "weightDevice": [{"major": 8, "minor": 0, "weight": 200}, {"major": 8, "minor": 16}],
        "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
        "throttleWriteBpsDevice": [{"major": 8, "minor": 0, "rate": 0}],
        "throttleReadIOPSDevice": [{"major": 8, "minor": 0, "rate": 100}],
        "throttleWriteIOPSDevice": [{"major": 8, "minor": 16, "rate": 50}],
    }
    p = R + "/blockIO"
    assert translate({"blockIO": blk}) == [
        ("io.bfq.weight", "500", p + "/weight"),
        ("io.bfq.weight", "8:0 200", p + "/weightDevice/0/weight"),
        ("io.max", "8:0 rbps=1048576", p + "/throttleReadBpsDevice/0"),
        ("io.max", "8:0 wbps=max", p + "/throttleWriteBpsDevice/0"),  # 0: no limit
        ("io.max", "8:0 riops=100", p + "/throttleReadIOPSDevice/0"),
        ("io.max", "8:16 wiops=50", p + "/throttleWriteIOPSDevice/0"),
    ]
    err = error_of({"blockIO": {"throttleReadBpsDevice": [{"major": 8, "rate": 1}]}})
    assert err.pointer == p + "/throttleReadBpsDevice/0/minor"


@pytest.mark.parametrize("weight,io_weight", [(10, 1), (1000, 10000), (500, 4950), (100, 910)])
def test_blkio_weight_to_io_weight(weight: int, io_weight: int) -> None:
    assert resources.blkio_to_io_weight(weight) == io_weight


def test_hugetlb_and_rdma() -> None:
    resources = {
        "hugepageLimits": [{"pageSize": "2MB", "limit": 4 << 20}, {"pageSize": "1GB", "limit": 0}],
        "rdma": {"mlx5_1": {"hcaHandles": 3, "hcaObjects": 10000}, "mlx4_0": {"hcaHandles": 2}},
    }
    assert translate(resources) == [
        ("hugetlb.2MB.max", str(4 << 20), R + "/hugepageLimits/0"),
        ("hugetlb.1GB.max", "0", R + "/hugepageLimits/1"),
        ("rdma.max", "mlx5_1 hca_handle=3 hca_object=10000", R + "/rdma/mlx5_1"),
        ("rdma.max", "mlx4_0 hca_handle=2 hca_object=max", R + "/rdma/mlx4_0"),
    ]
    for bad in ("../../memory", "2MB/x", "", "2 MB"):
        err = error_of({"hugepageLimits": [{"pageSize": bad, "limit": 1}]})
        assert err.pointer == R + "/hugepageLimits/0/pageSize"


# --- translate: unified -------------------------------------------------------------------
def test_unified_is_verbatim_and_last() -> None:
    resources = {
        "unified": {"memory.max": "1000000", "memory.high": "900000", "cpu.weight.nice": 5,
                    "cgroup.max.descendants": "10"},
        "memory": {"limit": 2000000},
        "pids": {"limit": 10},
    }  # fmt: skip
    assert files(resources) == [
        ("memory.max", "2000000"),
        ("pids.max", "10"),
        ("memory.max", "1000000"),  # written after the converted value: it wins
        ("memory.high", "900000"),
        ("cpu.weight.nice", "5"),
        ("cgroup.max.descendants", "10"),
    ]
    assert translate({"unified": {"io.max": "8:0 rbps=1"}})[0][2] == R + "/unified/io.max"


@pytest.mark.parametrize(
    "key,pointer_key,words",
    [
        ("../memory.max", "..~1memory.max", "not a cgroup v2 interface file"),
        ("memory/../../x", "memory~1..~1..~1x", "not a cgroup v2 interface file"),
        ("memory..max", "memory..max", "not a cgroup v2 interface file"),
        ("memory", "memory", "not a cgroup v2 interface file"),
        (".max", ".max", "not a cgroup v2 interface file"),
        ("foo.bar", "foo.bar", "no known cgroup v2 controller"),
        ("blkio.weight", "blkio.weight", "no known cgroup v2 controller"),
        ("cgroup.procs", "cgroup.procs", "the runtime's"),
        ("cgroup.subtree_control", "cgroup.subtree_control", "the runtime's"),
        ("cgroup.kill", "cgroup.kill", "the runtime's"),
        ("a~b.max", "a~0b.max", "no known cgroup v2 controller"),
    ],
)
def test_unified_keys_are_checked(key: str, pointer_key: str, words: str) -> None:
    err = error_of({"unified": {key: "1"}})
    assert err.pointer == f"{R}/unified/{pointer_key}"
    assert words in str(err)


def test_pointer_prefix_and_empty_sections() -> None:
    assert translate({}) == []
    assert translate({"memory": {}, "cpu": None, "pids": {}, "unified": {}, "devices": []}) == []
    assert translate({"pids": {"limit": 5}}, pointer="") == [("pids.max", "5", "/pids/limit")]


# --- cgroup_dir ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cgroups_path,rel",
    [
        ("", "hyperpy/c1"),
        ("/kubepods/pod1/ctr", "kubepods/pod1/ctr"),
        ("kubepods/pod1/ctr", "kubepods/pod1/ctr"),
        ("/a//b/./c/", "a/b/c"),
        ("/a/../../b", "b"),  # ".." cannot climb above the root (runc's CleanPath)
        ("../../../etc", "etc"),
        ("/x/y/..", "x"),
        # colons are part of a name: runc's cgroupfs driver takes the path as it is
        ("kubepods-pod1.slice:cri-containerd:c1", "kubepods-pod1.slice:cri-containerd:c1"),
    ],
)
def test_cgroup_dir(cgroups_path: str, rel: str) -> None:
    assert cgroup_dir("c1", cgroups_path, "/sys/fs/cgroup") == "/sys/fs/cgroup/" + rel
    assert cgroup_dir("c1", cgroups_path, "/tmp/cg") == "/tmp/cg/" + rel


@pytest.mark.parametrize("cgroups_path", ["/", ".", "/a/..", "../..", "/a\0b"])
def test_bad_cgroups_path_names_the_field(cgroups_path: str) -> None:
    with pytest.raises(SetupError) as err:
        cgroup_dir("c1", cgroups_path, "/sys/fs/cgroup")
    assert err.value.pointer == "/linux/cgroupsPath"


@pytest.mark.parametrize(
    "spec,rel",
    [
        ("system.slice:docker:abc", "system.slice/docker-abc.scope"),
        (
            "kubepods-besteffort-pod1.slice:cri-containerd:c1",
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/"
            "cri-containerd-c1.scope",
        ),
        (":hyperpy:x", "system.slice/hyperpy-x.scope"),
        ("-.slice:p:n", "p-n.scope"),
        ("user.slice::sess.scope", "user.slice/sess.scope"),
        ("user.slice::sess", "user.slice/sess.scope"),
    ],
)
def test_systemd_path(spec: str, rel: str) -> None:
    assert cgroups.systemd_path(spec) == rel


@pytest.mark.parametrize(
    "spec",
    ["a:b", "a:b:c:d", "system:docker:x", ".slice:p:n", "a--b.slice:p:n", "-a.slice:p:n",
     "system.slice:p:", "system.slice:p:a/b", "a/b.slice:p:n"],
)  # fmt: skip
def test_bad_systemd_path_names_the_field(spec: str) -> None:
    with pytest.raises(SetupError) as err:
        cgroups.systemd_path(spec)
    assert err.value.pointer == "/linux/cgroupsPath"


def test_agent_and_host_agree_on_systemd_paths() -> None:
    from hyperpy.hostcgroup import systemd_path

    for spec in ("system.slice:docker:abc", "a-b-c.slice:p:n", ":x:y", "-.slice:p:n",
                 "user.slice::sess.scope"):  # fmt: skip
        assert cgroups.systemd_path(spec) == systemd_path(spec)


# --- fake cgroup directories --------------------------------------------------------------
def fake(d: str, **contents: str) -> str:
    """A directory standing in for a cgroup: files named with "__" for "." ."""
    os.makedirs(d, exist_ok=True)
    for name, text in contents.items():
        with open(os.path.join(d, name.replace("__", ".")), "w") as f:
            f.write(text)
    return d


def read(d: str, name: str) -> str:
    with open(os.path.join(d, name)) as f:
        return f.read()


def test_enable_controllers_walks_every_ancestor(tmp_path) -> None:
    root = str(tmp_path)
    ctl = {"cgroup__subtree_control": ""}
    fake(root, cgroup__controllers="cpuset cpu io memory hugetlb pids rdma misc", **ctl)
    fake(root + "/a", cgroup__controllers="cpu memory pids", **ctl)
    fake(root + "/a/b", cgroup__controllers="cpu memory", cgroup__subtree_control="memory")
    fake(root + "/a/b/c", cgroup__controllers="", **ctl)  # the container's: not touched
    cgroups.enable_controllers(root + "/a/b/c", root)
    assert (
        read(root, "cgroup.subtree_control")
        == "+cpuset +cpu +io +memory +hugetlb +pids +rdma +misc"
    )
    assert read(root + "/a", "cgroup.subtree_control") == "+cpu +memory +pids"
    assert read(root + "/a/b", "cgroup.subtree_control") == "+cpu"  # memory already on
    assert read(root + "/a/b/c", "cgroup.subtree_control") == ""
    with pytest.raises(SetupError):
        cgroups.enable_controllers("/elsewhere/x", root)


def test_write_errors_name_file_value_and_field(tmp_path) -> None:
    d = fake(str(tmp_path / "c"), cgroup__procs="")
    with pytest.raises(SetupError) as err:
        cgroups.update(d, {"memory": {"limit": 5}})
    assert err.value.pointer == R + "/memory/limit"
    assert str(err.value) == "cannot write 5 to memory.max: No such file or directory"
    assert not os.path.exists(os.path.join(d, "memory.max"))  # never created


def test_fallbacks_bfq_to_io_weight_and_absent_swap(tmp_path) -> None:
    d = fake(str(tmp_path / "c"), io__weight="", memory__max="")
    cgroups.update(d, {"blockIO": {"weight": 500}, "memory": {"limit": G, "swap": G}})
    assert read(d, "io.weight") == "default 4950"  # no io.bfq.weight: runc's conversion
    assert read(d, "memory.max") == str(G)  # no memory.swap.max and "0": nothing to forbid
    cgroups.update(d, {"blockIO": {"weightDevice": [{"major": 8, "minor": 0, "weight": 10}]}})
    assert read(d, "io.weight") == "8:0 1"
    with pytest.raises(SetupError) as err:
        cgroups.update(d, {"memory": {"limit": G, "swap": 2 * G}})  # a real limit: not ignored
    assert err.value.pointer == R + "/memory/swap"


def test_burst_and_quota_in_either_direction(tmp_path, monkeypatch) -> None:
    """The kernel refuses a burst above the quota and a quota below the burst; runc's order
    (burst, quota, burst again if it was refused) gets through both ways."""
    d = fake(str(tmp_path / "c"), cpu__max="10000 100000", cpu__max__burst="0")
    done: list[tuple[str, str]] = []
    real = cgroups._write

    def write(path: str, value: str) -> None:
        name = os.path.basename(path)
        quota = read(d, "cpu.max").split()[0]
        if name == "cpu.max.burst" and quota != "max" and int(value) > int(quota):
            raise OSError(errno.EINVAL, "Invalid argument")
        if name == "cpu.max" and int(value.split()[0]) < int(read(d, "cpu.max.burst")):
            raise OSError(errno.EINVAL, "Invalid argument")
        real(path, value)
        done.append((name, value))

    monkeypatch.setattr(cgroups, "_write", write)
    cgroups.update(d, {"cpu": {"quota": 50000, "period": 100000, "burst": 20000}})  # up
    assert done == [("cpu.max", "50000 100000"), ("cpu.max.burst", "20000")]
    done.clear()
    cgroups.update(d, {"cpu": {"quota": 5000, "period": 100000, "burst": 1000}})  # down
    assert done == [("cpu.max.burst", "1000"), ("cpu.max", "5000 100000")]
    with pytest.raises(SetupError) as err:  # no cpu.max write follows: the error stands
        cgroups.update(d, {"cpu": {"burst": 30000}})
    assert err.value.pointer == R + "/cpu/burst"
    assert str(err.value) == "cannot write 30000 to cpu.max.burst: Invalid argument"


def test_update_keeps_what_oci_couples(tmp_path) -> None:
    d = fake(str(tmp_path / "c"), memory__max=str(G), memory__swap__max="0",
             memory__current=str(G // 2), cpu__max="50000 200000")  # fmt: skip
    cgroups.update(d, {"memory": {"swap": 3 * G}})  # against the current memory.max
    assert read(d, "memory.swap.max") == str(2 * G)
    cgroups.update(d, {"cpu": {"quota": 10000}})  # keeps the period
    assert read(d, "cpu.max") == "10000 200000"
    cgroups.update(d, {"cpu": {"period": 400000}})  # keeps the quota
    assert read(d, "cpu.max") == "10000 400000"
    with pytest.raises(SetupError) as err:
        cgroups.update(d, {"memory": {"limit": G // 4, "checkBeforeUpdate": True}})
    assert err.value.pointer == R + "/memory/limit" and "current usage" in str(err.value)
    cgroups.update(d, {"memory": {"limit": G // 4}})  # without the check: the kernel decides
    assert read(d, "memory.max") == str(G // 4)


def test_stats_reads_every_file(tmp_path) -> None:
    d = fake(
        str(tmp_path / "c"),
        cpu__stat="usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 10\n"
        "nr_throttled 3\nthrottled_usec 70\n",
        memory__current="4096000",
        memory__max="8192000",
        memory__peak="5000000",
        memory__events="low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\n",
        memory__stat="anon 100\nfile 200\nkernel 300\nsock 40\n",
        memory__swap__current="1000",
        memory__swap__max="max",
        pids__current="3",
        pids__max="64",
        io__stat="8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n",
        hugetlb__2MB__current="2097152",
        hugetlb__2MB__events="max 4\n",
        hugetlb__2MB__rsvd__current="0",
        cpu__pressure="some avg10=1.50 avg60=0.00 avg300=0.00 total=1234\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
        cgroup__procs="10\n11\n12\n",
    )
    s = cgroups.stats(d)
    assert s["cpu"]["usage"] == {"total": 1500000, "kernel": 500000, "user": 1000000}
    assert s["cpu"]["throttling"] == {"periods": 10, "throttledPeriods": 3, "throttledTime": 70000}
    assert s["cpu"]["psi"]["some"] == {"avg10": 1.5, "avg60": 0.0, "avg300": 0.0, "total": 1234}
    mem = s["memory"]
    assert mem["usage"] == {"limit": 8192000, "usage": 4096000, "max": 5000000, "failcnt": 7}
    assert mem["swap"]["usage"] == 4097000 and mem["swap"]["limit"] == cgroups.MAX_UINT64
    assert mem["cache"] == 200 and mem["kernel"]["usage"] == 300
    assert mem["kernelTCP"]["usage"] == 40
    assert mem["raw"] == {"anon": 100, "file": 200, "kernel": 300, "sock": 40}
    assert s["pids"] == {"current": 3, "limit": 64}
    assert s["blkio"]["ioServiceBytesRecursive"] == [
        {"major": 8, "minor": 0, "op": "Read", "value": 4096},
        {"major": 8, "minor": 0, "op": "Write", "value": 8192},
    ]
    assert s["blkio"]["ioServicedRecursive"] == [
        {"major": 8, "minor": 0, "op": "Read", "value": 1},
        {"major": 8, "minor": 0, "op": "Write", "value": 2},
    ]
    assert s["hugetlb"] == {"2MB": {"usage": 2097152, "max": 0, "failcnt": 4}}
    assert cgroups.oom_kills(d) == 1
    assert cgroups.pids(d) == [10, 11, 12]


def test_stats_of_nothing_are_zeros(tmp_path) -> None:
    for d in (fake(str(tmp_path / "empty")), str(tmp_path / "missing")):
        s = cgroups.stats(d)
        assert s["cpu"]["usage"]["total"] == 0
        assert s["memory"]["usage"] == {"limit": cgroups.MAX_UINT64, "usage": 0, "max": 0,
                                        "failcnt": 0}  # fmt: skip
        assert s["pids"] == {"current": 0, "limit": 0}
        assert s["blkio"] == {"ioServiceBytesRecursive": [], "ioServicedRecursive": []}
        assert s["hugetlb"] == {} and "psi" not in s["cpu"]
        assert cgroups.oom_kills(d) == 0 and cgroups.pids(d) == []
    d = fake(str(tmp_path / "odd"), pids__max="max", memory__max="garbage", io__stat="junk\n\n")
    s = cgroups.stats(d)
    assert s["pids"]["limit"] == 0  # "max": no limit, as runc reports it
    assert s["memory"]["usage"]["limit"] == 0 and s["blkio"]["ioServicedRecursive"] == []


# --- real cgroups on this machine ---------------------------------------------------------
def _cgroup2_mounts() -> list[str]:
    try:
        with open("/proc/self/mounts") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        fields = line.split()
        if len(fields) > 2 and fields[2] == "cgroup2":
            out.append(fields[1].replace("\\040", " "))
    return out


@pytest.fixture(scope="module")
def v2_root() -> Iterator[str]:
    """A cgroup2 mount: the host's (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid
    host), else a fresh one mounted on a temporary directory."""
    mounts = [m for m in _cgroup2_mounts() if os.path.exists(os.path.join(m, "cgroup.procs"))]
    made = ""
    if not mounts:
        made = tempfile.mkdtemp(prefix="hyperpy-cgroup2-")
        res = subprocess.run(["mount", "-t", "cgroup2", "cgroup2", made], capture_output=True)
        if res.returncode != 0:
            os.rmdir(made)
            pytest.skip(f"no cgroup2 is mounted and mounting one failed: {res.stderr.decode()}")
        mounts = [made]
    yield mounts[0]
    if made:
        subprocess.run(["umount", made], check=False)
        os.rmdir(made)


@pytest.fixture
def parent(v2_root: str) -> Iterator[str]:
    """A private parent cgroup for one test; the tests pass it as the root."""
    path = os.path.join(v2_root, f"hyperpy-test-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.mkdir(path)
    except OSError as exc:
        pytest.skip(f"cannot make a cgroup under {v2_root}: {exc.strerror}")
    yield path
    cgroups.remove(path, root=v2_root)  # with whatever a failed test left below it


def needs(parent: str, *controllers: str) -> None:
    offered = cgroups._read(parent, "cgroup.controllers").split()
    missing = [c for c in controllers if c not in offered]
    if missing:
        pytest.skip(
            f"cgroups under {os.path.dirname(parent)} are not offered {', '.join(missing)} "
            f"(they get: {' '.join(offered) or 'none'}); on a hybrid v1/v2 host these "
            "controllers are bound to v1 hierarchies, and this test leaves the host's root "
            "cgroup's subtree_control alone"
        )


def left_under(parent: str) -> list[str]:
    return [e.name for e in os.scandir(parent) if e.is_dir()]


def join(path: str, pid: int) -> None:
    with open(os.path.join(path, "cgroup.procs"), "w") as f:
        f.write(str(pid))


def held_child(burn: float = 0.0, alloc: int = 0) -> tuple[int, int, int]:
    """A child that waits for "go" (join it to a cgroup first), burns ``burn`` s of CPU and
    fills ``alloc`` bytes (charged to its cgroup from then on), says "done" and blocks until
    killed: (pid, go fd, done fd)."""
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(go_w)
            os.close(done_r)
            os.read(go_r, 1)
            start = time.process_time()
            while time.process_time() - start < burn:
                pass
            _held = b"\x01" * alloc  # referenced until the child is killed
            os.write(done_w, b"d")
            os.read(go_r, 1)
        finally:
            os._exit(0)
    os.close(go_r)
    os.close(done_w)
    return pid, go_w, done_r


def killed(pid: int) -> bool:
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="making cgroups needs root")


@needs_root
def test_real_create_join_stats_remove(parent: str) -> None:
    path = cgroups.create("c1", "/pod/ctr", {}, root=parent)
    assert path == os.path.join(parent, "pod/ctr") and os.path.isdir(path)
    offered = set(cgroups._read(parent, "cgroup.controllers").split())
    for d in (parent, os.path.join(parent, "pod")):  # delegated down to the container's parent
        assert set(cgroups._read(d, "cgroup.subtree_control").split()) >= offered & set(
            cgroups.CONTROLLERS
        )
    pid, go, done = held_child(burn=0.2)
    try:
        join(path, pid)
        assert cgroups.pids(path) == [pid]
        with pytest.raises(SetupError) as err:  # a second container in the same cgroup
            cgroups.create("c2", "/pod/ctr", {}, root=parent)
        assert err.value.pointer == "/linux/cgroupsPath"
        os.write(go, b"g")
        assert os.read(done, 1) == b"d"
        s = cgroups.stats(path)
        assert s["cpu"]["usage"]["total"] >= 100_000_000  # 0.1 s of the 0.2 s burnt, in ns
        assert s["cpu"]["usage"]["user"] + s["cpu"]["usage"]["kernel"] > 0
        assert all(isinstance(v, int) for v in s["memory"]["usage"].values())
        assert cgroups.oom_kills(path) == 0
        assert cgroups.remove(path, root=parent) is True
    finally:
        os.close(go)
        os.close(done)
    assert killed(pid)
    assert left_under(parent) == []  # the container's cgroup and the emptied "pod"
    assert os.path.isdir(parent)  # the root is never removed


@needs_root
def test_real_remove_keeps_parents_with_other_children(parent: str) -> None:
    a = cgroups.create("a", "pod/a", {}, root=parent)
    b = cgroups.create("b", "pod/b", {}, root=parent)
    os.mkdir(os.path.join(a, "made-inside"))  # a container's own sub-cgroup
    assert cgroups.remove(a, root=parent)
    assert os.path.isdir(b) and not os.path.exists(a)
    assert cgroups.remove(b, root=parent)
    assert left_under(parent) == []
    assert cgroups.remove(b, root=parent)  # already gone: fine


@needs_root
def test_real_unified_core_file_limits_and_update(parent: str) -> None:
    path = cgroups.create("c1", "ctr", {"unified": {"cgroup.max.descendants": "1"}}, parent)
    assert cgroups._read(path, "cgroup.max.descendants") == "1"
    os.mkdir(os.path.join(path, "one"))
    with pytest.raises(OSError) as err:  # the limit is the kernel's, not ours
        os.mkdir(os.path.join(path, "two"))
    assert err.value.errno == errno.EAGAIN
    cgroups.update(path, {"unified": {"cgroup.max.descendants": "3"}})
    os.mkdir(os.path.join(path, "two"))
    assert cgroups.remove(path, root=parent)
    assert left_under(parent) == []


@needs_root
def test_real_write_error_names_the_field_and_leaves_nothing(parent: str) -> None:
    with pytest.raises(SetupError) as err:
        cgroups.create("c1", "pod/ctr", {"unified": {"cgroup.max.depth": "lots"}}, parent)
    assert err.value.pointer == "/linux/resources/unified/cgroup.max.depth"
    assert str(err.value) == "cannot write lots to cgroup.max.depth: Invalid argument"
    assert left_under(parent) == []


@needs_root
def test_real_missing_controller_names_the_field(parent: str) -> None:
    if "memory" in cgroups._read(parent, "cgroup.controllers").split():
        pytest.skip("the memory controller is offered here: test_real_memory_* cover it")
    with pytest.raises(SetupError) as err:
        cgroups.create("c1", "ctr", {"memory": {"limit": 64 << 20}}, parent)
    assert err.value.pointer == "/linux/resources/memory/limit"
    assert str(err.value) == f"cannot write {64 << 20} to memory.max: No such file or directory"
    assert left_under(parent) == []


@needs_root
def test_real_remove_without_cgroup_kill(parent: str, monkeypatch) -> None:
    """Before Linux 5.14 there is no cgroup.kill: each process gets SIGKILL, also forks."""
    real = cgroups._write

    def write(path: str, value: str) -> None:
        if path.endswith("/cgroup.kill"):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory")
        real(path, value)

    monkeypatch.setattr(cgroups, "_write", write)
    path = cgroups.create("c1", "ctr", {}, parent)
    pid, go, done = held_child()
    try:
        join(path, pid)
        assert cgroups.remove(path, root=parent)
    finally:
        os.close(go)
        os.close(done)
    assert killed(pid)
    assert left_under(parent) == []


@needs_root
def test_real_pids_limit_stops_a_fork_bomb(parent: str) -> None:
    needs(parent, "pids")
    path = cgroups.create("c1", "ctr", {"pids": {"limit": 16}}, parent)
    assert cgroups._read(path, "pids.max") == "16"
    go_r, go_w = os.pipe()
    res_r, res_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(go_w)
            os.close(res_r)
            os.read(go_r, 1)
            forks, err = 0, 0
            for _ in range(64):
                try:
                    child = os.fork()
                except OSError as exc:
                    err = exc.errno or 0
                    break
                if child == 0:
                    os.read(go_r, 1)  # blocks: nobody writes again
                    os._exit(0)
                forks += 1
            os.write(res_w, f"{forks} {err}".encode())
            os.read(go_r, 1)
        finally:
            os._exit(0)
    os.close(go_r)
    os.close(res_w)
    try:
        join(path, pid)
        os.write(go_w, b"g")
        forks, err = map(int, os.read(res_r, 64).split())
        assert err == errno.EAGAIN
        assert forks == 15  # the child itself is the 16th
        s = cgroups.stats(path)
        assert s["pids"] == {"current": 16, "limit": 16}
        assert len(cgroups.pids(path)) == 16
        assert cgroups.remove(path, root=parent)
    finally:
        os.close(go_w)
        os.close(res_r)
    assert killed(pid)
    assert left_under(parent) == []


@needs_root
def test_real_memory_limit_and_oom_kill(parent: str) -> None:
    needs(parent, "memory")
    limit = 32 << 20
    path = cgroups.create("c1", "ctr", {"memory": {"limit": limit, "swap": limit}}, parent)
    assert cgroups._read(path, "memory.max") == str(limit)
    no_swap = cgroups._read(path, "memory.swap.max") == "0"
    if not no_swap:
        with open("/proc/swaps") as f:
            no_swap = len(f.read().splitlines()) <= 1
    pid, go, done = held_child(alloc=8 << 20)
    try:
        join(path, pid)
        os.write(go, b"g")
        assert os.read(done, 1) == b"d"
        s = cgroups.stats(path)
        assert s["memory"]["usage"]["limit"] == limit
        assert s["memory"]["usage"]["usage"] >= 8 << 20
        if no_swap:  # with swap but no swap accounting the child may page out instead
            pid2 = os.fork()
            if pid2 == 0:
                try:
                    join(path, os.getpid())
                    data = b"\x01" * (4 * limit)  # touched pages: all charged
                    os._exit(0 if data else 1)
                finally:
                    os._exit(0)
            assert killed(pid2)  # by the OOM killer
            assert cgroups.oom_kills(path) >= 1
            assert cgroups.stats(path)["memory"]["usage"]["failcnt"] >= 1
        assert cgroups.remove(path, root=parent)
    finally:
        os.close(go)
        os.close(done)
    assert killed(pid)
    assert left_under(parent) == []
