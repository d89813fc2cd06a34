"""What config.json asks for, read from inside the container in a real guest."""

from __future__ import annotations

import copy
import json
import os

import pytest

from hyperpy.oci.spec import default_spec
from tests.conftest import hyperpy, needs_artifacts, qemu_may_write

# on both hypervisor drivers (tests/vm/conftest.py)
pytestmark = [pytest.mark.vm, needs_artifacts, pytest.mark.usefixtures("driver")]


def run_spec(root, bundle, cid, script, edit, input=None, flags=()):
    """Run ``sh -c script`` with the default spec changed by ``edit(spec)``."""
    b = bundle(["true"])
    spec = default_spec()
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["sh", "-c", script]
    edit(spec)
    with open(f"{b}/config.json", "w") as f:
        json.dump(spec, f)
    return hyperpy(root, "run", "--bundle", b, *flags, cid, input=input)


def facts(output: bytes) -> dict[str, str]:
    out = {}
    for line in output.decode().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


CAP_NET_BIND_SERVICE = 1 << 10
CAP_KILL = 1 << 5

PROBE = r"""
status() { grep "^$1:" /proc/self/status | cut -f2; }
echo "CapEff=$(status CapEff)"; echo "CapPrm=$(status CapPrm)"; echo "CapBnd=$(status CapBnd)"
echo "CapInh=$(status CapInh)"; echo "CapAmb=$(status CapAmb)"
echo "NoNewPrivs=$(status NoNewPrivs)"; echo "Seccomp=$(status Seccomp)"
echo "id=$(id)"; echo "umask=$(umask)"
echo "nofile_soft=$(ulimit -n)"; echo "nofile_hard=$(ulimit -Hn)"
echo "hostname=$(hostname)"; echo "domainname=$(cat /proc/sys/kernel/domainname)"
echo "ip_forward=$(cat /proc/sys/net/ipv4/ip_forward)"
echo "msgmax=$(cat /proc/sys/kernel/msgmax)"
echo "rootfs_write=$(touch /probe 2>&1)"
echo "masked_file_bytes=$(wc -c < /proc/cmdline)"
echo "masked_dir_entries=$(ls -A /sys/kernel | wc -l)"
echo "sysfs_write=$(echo x 2>&1 > /proc/sys/kernel/domainname)"
echo "root_mount=$(awk '$5 == "/" {print $6}' /proc/self/mountinfo | tail -1)"
echo "devices=$(cd /dev && ls null zero full random urandom tty ptmx 2>&1 | tr '\n' ' ')"
echo "memory_max=$(cat /sys/fs/cgroup/memory.max)"
echo "pids_max=$(cat /sys/fs/cgroup/pids.max)"
echo "cpu_max=$(cat /sys/fs/cgroup/cpu.max)"
echo "cpu_weight=$(cat /sys/fs/cgroup/cpu.weight)"
echo "cgroup=$(cat /proc/self/cgroup)"
echo "pid1=$(cat /proc/1/cmdline | tr '\0' ' ')"
echo "uid_map=$(cat /proc/self/uid_map | tr -s ' ')"
echo "oom_score_adj=$(cat /proc/self/oom_score_adj)"
echo "mqueue=$(awk '$5 == "/dev/mqueue" {print $9}' /proc/self/mountinfo)"
echo "root_propagation=$(awk '$5 == "/" {print $7}' /proc/self/mountinfo | tail -1)"
"""


def rich(spec: dict) -> None:
    spec["hostname"] = "iso1"
    spec["domainname"] = "example.org"
    p = spec["process"]
    p["user"] = {"uid": 1000, "gid": 1000, "additionalGids": [10, 20], "umask": 0o027}
    p["capabilities"] = {
        "bounding": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
        "effective": ["CAP_NET_BIND_SERVICE"],
        "permitted": ["CAP_NET_BIND_SERVICE"],
        "inheritable": ["CAP_NET_BIND_SERVICE"],
        "ambient": ["CAP_NET_BIND_SERVICE"],
    }
    p["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": 512, "hard": 1000}]
    p["noNewPrivileges"] = True
    p["oomScoreAdj"] = 500
    lx = spec["linux"]
    lx["rootfsPropagation"] = "shared"
    lx["namespaces"] = [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "cgroup")]
    lx["sysctl"] = {"net.ipv4.ip_forward": "1", "kernel.msgmax": "4096"}
    lx["resources"] = {
        "memory": {"limit": 96 << 20},
        "pids": {"limit": 50},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000},
    }
    lx["maskedPaths"] = ["/proc/cmdline", "/sys/kernel", "/proc/does-not-exist"]
    lx["readonlyPaths"] = ["/proc/sys"]


def test_process_and_filesystem_as_the_spec_says(root, bundle):
    res = run_spec(root, bundle, "iso1", PROBE, rich)
    assert res.returncode == 0, res.stderr.decode()
    f = facts(res.stdout)
    assert int(f["CapEff"], 16) == CAP_NET_BIND_SERVICE, f
    assert int(f["CapPrm"], 16) == CAP_NET_BIND_SERVICE
    assert int(f["CapBnd"], 16) == CAP_NET_BIND_SERVICE | CAP_KILL
    assert int(f["CapInh"], 16) == CAP_NET_BIND_SERVICE
    assert int(f["CapAmb"], 16) == CAP_NET_BIND_SERVICE
    assert f["NoNewPrivs"] == "1"
    assert f["id"].startswith("uid=1000 gid=1000") and "10" in f["id"] and "20" in f["id"]
    assert f["umask"] == "0027"
    assert (f["nofile_soft"], f["nofile_hard"]) == ("512", "1000")
    assert (f["hostname"], f["domainname"]) == ("iso1", "example.org")
    assert (f["ip_forward"], f["msgmax"]) == ("1", "4096")
    assert "Read-only file system" in f["rootfs_write"]
    assert f["masked_file_bytes"] == "0"  # /dev/null bound over it
    assert f["masked_dir_entries"] == "0"  # an empty read-only tmpfs over it
    assert "Read-only file system" in f["sysfs_write"] or "denied" in f["sysfs_write"]
    assert f["root_mount"].split(",")[0] == "ro"
    assert "No such file" not in f["devices"], f["devices"]
    assert f["memory_max"] == str(96 << 20)
    assert f["pids_max"] == "50"
    assert f["cpu_max"] == "50000 100000"
    assert f["cpu_weight"] == str(1 + ((512 - 2) * 9999) // 262142)
    assert f["cgroup"] == "0::/"  # its own cgroup namespace
    assert f["pid1"].startswith("sh -c")  # its own pid namespace
    assert f["oom_score_adj"] == "500"
    assert f["mqueue"] == "mqueue"
    # the default (rslave of the guest's private mounts) shows no peer group: "shared" does
    assert f["root_propagation"].startswith("shared:"), f["root_propagation"]


@pytest.mark.parametrize("nnp", [True, False])
def test_seccomp_errno_and_default_action(root, bundle, nnp):
    def edit(spec):
        # without no_new_privs the filter goes in before the switch to a non-root user
        spec["process"]["noNewPrivileges"] = nnp
        spec["process"]["user"] = {"uid": 0 if nnp else 1000, "gid": 0 if nnp else 1000}
        spec["linux"]["seccomp"] = {
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
                {"names": ["_llseek", "chown32"], "action": "SCMP_ACT_ERRNO"},  # i386 only
            ],
        }
        spec["root"]["readonly"] = False

    script = 'grep Seccomp: /proc/self/status; mkdir /tmp/x 2>&1; echo "rc=$?"; echo ok'
    res = run_spec(root, bundle, f"sec{int(nnp)}", script, edit)
    assert res.returncode == 0, res.stderr.decode()
    out = res.stdout.decode()
    assert "Seccomp:\t2" in out
    assert "Function not implemented" in out and "rc=1" in out and "ok" in out


def test_memory_hog_is_oom_killed(root, bundle):
    def edit(spec):
        spec["linux"]["resources"] = {"memory": {"limit": 32 << 20, "swap": 32 << 20}}

    res = run_spec(root, bundle, "oom1", "exec dd if=/dev/zero of=/dev/null bs=100M count=1",
                   edit)  # fmt: skip
    assert res.returncode == 137, (res.returncode, res.stderr.decode())


def test_fork_bomb_stops_at_pids_max(root, bundle):
    def edit(spec):
        spec["linux"]["resources"] = {"pids": {"limit": 12}}

    # The bomb runs in a child shell, which dies on its first refused fork; then only shell
    # builtins.  Leaving kills the sleeps (the pid namespace's init exits).
    script = (
        "sh -c 'while true; do sleep 30 & done' 2>/dev/null; "
        "read cur < /sys/fs/cgroup/pids.current; echo current=$cur; "
        "while read k v; do echo events=$v; done < /sys/fs/cgroup/pids.events"
    )
    res = run_spec(root, bundle, "fork1", script, edit)
    f = facts(res.stdout)
    assert int(f["current"]) <= 12, res.stdout
    assert int(f["events"].split()[-1]) > 0  # forks were refused: "max N"


def test_an_unknown_capability_is_ignored_as_runc_ignores_it(root, bundle):
    """A capability newer than this kernel's table (a profile written for a later kernel):
    runc warns and runs without it; so does hyperpy, and the known ones still apply."""

    def edit(spec):
        for kind in ("bounding", "effective", "permitted"):
            spec["process"]["capabilities"][kind] = ["CAP_NOPE", "CAP_KILL"]

    res = run_spec(root, bundle, "badcap", "grep CapEff /proc/self/status", edit)
    assert res.returncode == 0, res.stderr.decode()
    assert "ignoring unknown or unavailable capabilities: CAP_NOPE" in res.stderr.decode()
    assert res.stdout.decode().split() == ["CapEff:", f"{1 << 5:016x}"]  # CAP_KILL alone


def test_impossible_mount_names_the_field_and_cleans_up(root, bundle):
    def edit(spec):
        spec["mounts"] = copy.deepcopy(spec["mounts"]) + [
            {"destination": "/data", "type": "nosuchfs", "source": "none"}
        ]

    res = run_spec(root, bundle, "badmount", "true", edit)
    assert res.returncode == 3, res.stderr.decode()
    n = len(default_spec()["mounts"])
    assert f"/mounts/{n}" in res.stderr.decode() and "nosuchfs" in res.stderr.decode()


def test_user_namespace_maps(root, bundle):
    def edit(spec):
        spec["linux"]["namespaces"].append({"type": "user"})
        spec["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
        spec["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 200000, "size": 65536}]

    script = (
        'echo "uid_map=$(tr -s " " < /proc/self/uid_map)"; '
        'echo "gid_map=$(tr -s " " < /proc/self/gid_map)"; echo "id=$(id -u):$(id -g)"; '
        'echo "devnull=$(echo x > /dev/null && echo writable)"'
    )
    res = run_spec(root, bundle, "userns1", script, edit)
    assert res.returncode == 0, res.stderr.decode()
    f = facts(res.stdout)
    assert f["uid_map"].split() == ["0", "100000", "65536"]
    assert f["gid_map"].split() == ["0", "200000", "65536"]
    assert f["id"] == "0:0"
    assert f["devnull"] == "writable"  # default devices bound in, mknod is not allowed


@pytest.mark.parametrize("no_pivot", [False, True])
def test_guest_filesystem_is_out_of_reach(root, bundle, no_pivot):
    """After pivot_root the guest's initramfs (the agent, its Python) is detached; with
    --no-pivot (chroot) it is not mounted inside either."""

    def edit(spec):
        spec["process"]["capabilities"] = {
            k: ["CAP_SYS_CHROOT", "CAP_SYS_ADMIN"] for k in ("bounding", "effective", "permitted")
        }

    script = (
        'echo "agent=$(ls /opt/hyperpy 2>&1 | head -1)"; '
        'echo "mounts=$(awk \'$5 == "/"\' /proc/self/mountinfo | wc -l)"'
    )
    flags = ["--no-pivot"] if no_pivot else []
    res = run_spec(root, bundle, f"piv{int(no_pivot)}", script, edit, flags=flags)
    assert res.returncode == 0, res.stderr.decode()
    f = facts(res.stdout)
    assert "No such file" in f["agent"]
    if not no_pivot:
        with_root = [ln for ln in res.stdout.decode().splitlines() if ln.startswith("mounts=")]
        assert with_root == ["mounts=1"]  # only the container's root: the old one is gone


def test_bind_mounts_from_the_host(root, bundle, tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "hello.txt").write_text("from the host\n")
    out = tmp_path / "out"
    out.mkdir()
    qemu_may_write(str(out))

    def edit(spec):
        spec["mounts"] += [
            {"destination": "/data", "type": "bind", "source": str(vol),
             "options": ["rbind", "ro", "nosuid", "nodev"]},
            {"destination": "/out", "type": "bind", "source": str(out), "options": ["rbind"]},
        ]  # fmt: skip

    script = (
        'echo "read=$(cat /data/hello.txt)"; '
        'echo "ro=$(touch /data/x 2>&1)"; echo written > /out/result; echo "done=1"'
    )
    res = run_spec(root, bundle, "bind1", script, edit)
    assert res.returncode == 0, res.stderr.decode()
    f = facts(res.stdout)
    assert f["read"] == "from the host"
    assert "Read-only file system" in f["ro"]
    assert (out / "result").read_text() == "written\n"  # writes reach the host


def test_missing_bind_source_fails_before_any_vm(root, bundle, tmp_path):
    def edit(spec):
        spec["mounts"].append({"destination": "/data", "type": "bind",
                               "source": str(tmp_path / "nope"), "options": ["rbind"]})  # fmt: skip

    res = run_spec(root, bundle, "bind2", "true", edit)
    assert res.returncode == 3
    n = len(default_spec()["mounts"])
    assert f"/mounts/{n}/source".encode() in res.stderr and b"does not exist" in res.stderr
    assert not os.listdir(root) if os.path.exists(root) else True
