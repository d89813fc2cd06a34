"""The remote driver against a real sshd (tests/sshd.py): the pod's VM runs on the "remote"
host (this machine, through SSH, with a work directory of its own), the node keeps the
CLI, the monitor and the proxies. After each test nothing of it is left on either side:
no process under the remote work directory, no pod directory there, no state on the node.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from hyperpy.vm.ssh import file_hash
from tests.conftest import ARTIFACTS, HYPERPY, needs_artifacts, own_netns, processes_under, settled
from tests.sshd import Sshd
from tests.vm.test_lifecycle import subreaper, wait_exit  # noqa: F401 - fixture

pytestmark = [pytest.mark.vm, needs_artifacts, pytest.mark.usefixtures("subreaper")]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    with Sshd(str(tmp_path_factory.mktemp("sshd"))) as s:
        yield s


def pods(sshd: Sshd) -> list[str]:
    d = os.path.join(sshd.workdir, "pods")
    return os.listdir(d) if os.path.isdir(d) else []


@pytest.fixture
def remote(sshd, monkeypatch):
    monkeypatch.setenv("HYPERPY_CONFIG", sshd.config())
    yield sshd
    assert settled(lambda: processes_under(sshd.workdir)) == [], "left running on the remote"
    assert settled(lambda: pods(sshd)) == [], "pod directories left on the remote"


def hp(sshd: Sshd, root: str, *args: str, input: bytes | None = None, **kw):
    return subprocess.run(sshd.hyperpy_argv(HYPERPY, "--root", root, *args), input=input,
                          capture_output=True, timeout=180, **kw)  # fmt: skip


def create(sshd: Sshd, root: str, bundle: str, cid: str) -> int:
    pid_file = os.path.join(bundle, f"{cid}.pid")
    with open(os.path.join(bundle, f"{cid}.err"), "wb") as err:
        res = subprocess.run(
            sshd.hyperpy_argv(HYPERPY, "--root", root, "create", "--bundle", bundle,
                              "--pid-file", pid_file, cid),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, timeout=180,
        )  # fmt: skip
    assert res.returncode == 0, open(os.path.join(bundle, f"{cid}.err")).read()
    with open(pid_file) as f:
        return int(f.read())


def test_run_stdio_and_exit_status_through_the_remote_host(root, bundle, remote):
    b = bundle(["sh", "-c", 'read line; echo "got $line"; echo oops >&2; cat /etc/marker; '
                "uname -r; exit 7"])  # fmt: skip
    with open(f"{b}/rootfs/etc/marker", "w") as f:
        f.write("from the node\n")
    res = hp(remote, root, "run", "--bundle", b, "r1", input=b"hello\n")
    assert res.returncode == 7, res.stderr
    out = res.stdout.decode().splitlines()
    assert out[:2] == ["got hello", "from the node"], out
    assert out[2].endswith("-hyperpy")  # our guest kernel
    assert b"oops" in res.stderr
    # the artifacts went to the remote host's cache, named by their content, once
    cached = [os.path.join(remote.workdir, "cache", file_hash(os.path.join(ARTIFACTS, a)))
              for a in ("vmlinux", "initrd.img")]  # fmt: skip
    first = [os.stat(p).st_ino for p in cached]
    assert hp(remote, root, "run", "--bundle", bundle(["true"]), "r1b").returncode == 0
    assert [os.stat(p).st_ino for p in cached] == first  # not copied again
    assert os.listdir(root) == []


def test_a_64_character_id_as_docker_and_cri_make_them(root, bundle, remote):
    cid = "f" * 64
    res = hp(remote, root, "run", "--bundle", bundle(["echo", "long id"]), cid)
    assert res.returncode == 0 and res.stdout == b"long id\n", res.stderr


def test_exec_and_read_only_mounts_on_the_remote_host(root, bundle, remote, tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "note").write_text("copied over\n")
    b = bundle(["sleep", "1000"])
    with open(f"{b}/config.json") as f:
        spec = json.load(f)
    spec["mounts"].append({"destination": "/data", "type": "bind", "source": str(vol),
                           "options": ["rbind", "ro"]})  # fmt: skip
    with open(f"{b}/config.json", "w") as f:
        json.dump(spec, f)
    pid = create(remote, root, b, "r2")
    assert hp(remote, root, "start", "r2").returncode == 0
    res = hp(remote, root, "exec", "r2", "cat", "/data/note")
    assert res.returncode == 0 and res.stdout == b"copied over\n", res.stderr
    # the VM and the container's files are on the "remote" host, not the node
    qemus = [p for p in processes_under(remote.workdir) if "qemu-system" in p.split()[1]]
    assert len(qemus) == 1, qemus
    (pod,) = pods(remote)
    image = os.path.join(remote.workdir, "pods", pod, "image", "r2")
    assert len(os.path.join(remote.workdir, "pods", pod, "agent.sock")) < 108
    assert os.path.isfile(os.path.join(image, "rootfs", "bin", "busybox"))
    assert not [p for p in processes_under(root) if "qemu-system" in p.split()[1]]  # none here
    assert hp(remote, root, "delete", "--force", "r2").returncode == 0
    assert wait_exit(pid) in (137, 255)


def test_a_vm_whose_container_exited_is_stopped_by_qmp_over_ssh(root, bundle, remote):
    pid = create(remote, root, bundle(["sleep", "1000"]), "r9")
    assert hp(remote, root, "start", "r9").returncode == 0
    assert hp(remote, root, "kill", "r9", "KILL").returncode == 0
    assert wait_exit(pid) == 137
    # every process exited: the VM stops itself, QMP quit through the tunnel, not SIGTERM
    assert settled(lambda: processes_under(remote.workdir), timeout=30) == []

    def log_lacks():
        # the monitor logs QEMU's status once the ssh channel reports it, which can be
        # after the remote process is gone
        with open(os.path.join(root, "r9", "monitor.log")) as f:
            log = f.read()
        wanted = ("QMP quit sent to QEMU on 127.0.0.1", "exited with status 0")
        return [w for w in wanted if w not in log]

    assert settled(log_lacks, timeout=15) == []
    assert hp(remote, root, "delete", "r9").returncode == 0


def test_update_resizes_the_remote_vm_through_qmp_over_ssh(root, bundle, remote):
    """The balloon is moved through the QMP tunnel, the vCPUs by the agent (docs/resize.md)."""
    pid = create(remote, root, bundle(["sleep", "1000"]), "r10")
    assert hp(remote, root, "start", "r10").returncode == 0

    def seen() -> tuple[int, int]:
        res = hp(remote, root, "exec", "r10", "sh", "-c", "grep MemTotal /proc/meminfo; nproc")
        assert res.returncode == 0, res.stderr
        mem, nproc = res.stdout.decode().split("\n")[:2]
        return int(mem.split()[1]) >> 10, int(nproc)

    assert seen()[0] <= 256
    two = (os.cpu_count() or 1) >= 2
    quota = ["--cpu-quota", "200000", "--cpu-period", "100000"] if two else []
    res = hp(remote, root, "update", "--memory", "600m", *quota, "r10")
    assert res.returncode == 0, res.stderr
    mem, nproc = seen()
    assert 600 <= mem <= 760 and nproc == (2 if two else 1), (mem, nproc)
    assert hp(remote, root, "delete", "--force", "r10").returncode == 0
    assert wait_exit(pid) in (137, 255)


def test_a_read_write_mount_is_refused_naming_it(root, bundle, remote, tmp_path):
    b = bundle(["true"])
    with open(f"{b}/config.json") as f:
        spec = json.load(f)
    spec["mounts"].append({"destination": "/data", "type": "bind", "source": str(tmp_path),
                           "options": ["rbind", "rw"]})  # fmt: skip
    index = len(spec["mounts"]) - 1
    with open(f"{b}/config.json", "w") as f:
        json.dump(spec, f)
    res = hp(remote, root, "run", "--bundle", b, "r3")
    assert res.returncode == 3, res.stderr
    err = res.stderr.decode()
    assert f"config.json#/mounts/{index}/source" in err and "read-only" in err, err
    assert os.listdir(root) == []


def test_a_dropped_connection_is_a_vm_death_and_the_remote_vm_stops(root, bundle, remote):
    pid = create(remote, root, bundle(["sleep", "1000"]), "r4")
    assert hp(remote, root, "start", "r4").returncode == 0
    assert [p for p in processes_under(remote.workdir) if "qemu-system" in p.split()[1]]
    remote.kill_sessions()  # the network between node and remote host fails
    assert wait_exit(pid, timeout=60) == 255  # never 0
    # the remote side saw its node go: QEMU stopped, the pod's directory removed
    assert settled(lambda: processes_under(remote.workdir), timeout=30) == []
    assert settled(lambda: pods(remote), timeout=30) == []
    assert hp(remote, root, "delete", "--force", "r4").returncode == 0
    assert os.listdir(root) == []


def test_an_unknown_host_key_is_refused_naming_the_fix(root, bundle, sshd, tmp_path, monkeypatch):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    monkeypatch.setenv("HYPERPY_CONFIG", sshd.config(known_hosts=str(empty)))
    res = hp(sshd, root, "run", "--bundle", bundle(["true"]), "r5")
    assert res.returncode == 7, res.stderr
    err = res.stderr.decode()
    assert "127.0.0.1:2222 is not in [remote] known_hosts" in err and "ssh-keyscan" in err, err
    assert os.listdir(root) == [] and pods(sshd) == []


def test_check_names_the_remote_host_and_its_accelerator(sshd, monkeypatch):
    monkeypatch.setenv("HYPERPY_CONFIG", sshd.config(accel="auto"))
    res = subprocess.run(sshd.hyperpy_argv(HYPERPY, "check"), capture_output=True, timeout=180)
    out = res.stdout.decode()
    line = next(x for x in out.splitlines() if "hypervisor driver" in x)
    assert "root@127.0.0.1:2222" in line and "QEMU emulator" in line, out
    # this machine's /dev/kvm cannot run guests: the probe there falls back to TCG
    assert "accelerator there: tcg" in line, out


def test_a_key_the_remote_host_does_not_know_is_refused(root, bundle, sshd, tmp_path, monkeypatch):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
                   check=True, timeout=30)  # fmt: skip
    monkeypatch.setenv("HYPERPY_CONFIG", sshd.config(key_file=str(other)))
    res = hp(sshd, root, "run", "--bundle", bundle(["true"]), "r6")
    assert res.returncode == 7, res.stderr
    err = res.stderr.decode()
    assert f"authentication as root@127.0.0.1:2222 with [remote] key_file {other}" in err, err
    assert "authorized_keys" in err
    assert os.listdir(root) == [] and pods(sshd) == []


def test_a_pod_network_is_refused_it_cannot_reach_the_remote_vm(root, bundle, remote):
    pod_ns = f"hp-rpod-{os.getpid()}"
    with own_netns(pod_ns, loopback=False):
        subprocess.run(["ip", "-n", pod_ns, "link", "add", "eth0", "type", "veth", "peer",
                        "name", "eth1"], check=True, timeout=30)  # fmt: skip
        b = bundle(["true"])
        with open(f"{b}/config.json") as f:
            spec = json.load(f)
        for ns in spec["linux"]["namespaces"]:
            if ns["type"] == "network":
                ns["path"] = f"/run/netns/{pod_ns}"
        with open(f"{b}/config.json", "w") as f:
            json.dump(spec, f)
        res = hp(remote, root, "run", "--bundle", b, "r7")
        assert res.returncode != 0
        err = res.stderr.decode()
        assert "eth0" in err and "another host" in err and "--network none" in err, err
        assert os.listdir(root) == []


def test_a_silent_link_stops_the_remote_vm_by_its_watchdog(root, bundle, remote):
    """Packets dropped both ways, no FIN: the remote side hears no ping for watchdog_s and
    stops QEMU; the node's connection fails (TCP_USER_TIMEOUT) and the pod ends with 255."""
    pid = create(remote, root, bundle(["sleep", "1000"]), "r8")
    assert hp(remote, root, "start", "r8").returncode == 0
    rules = [["-p", "tcp", "--dport", "2222", "-j", "DROP"],
             ["-p", "tcp", "--sport", "2222", "-j", "DROP"]]  # fmt: skip
    for rule in rules:
        subprocess.run(remote.hyperpy_argv("iptables", "-I", "INPUT", *rule), check=True,
                       timeout=30)  # fmt: skip
    try:
        assert settled(lambda: processes_under(remote.workdir), timeout=40) == []
        assert settled(lambda: pods(remote), timeout=10) == []
        assert wait_exit(pid, timeout=60) == 255
    finally:
        for rule in rules:
            subprocess.run(remote.hyperpy_argv("iptables", "-D", "INPUT", *rule), timeout=30)
    assert hp(remote, root, "delete", "--force", "r8").returncode == 0
