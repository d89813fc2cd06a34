"""Kubernetes' view: containerd's CRI plugin with Debian's CNI plugins (bridge, host-local,
loopback), hyperpy as a runtime handler, driven through the CRI gRPC API as the kubelet
drives it (messages from tests/e2e/cri). containerd runs in a network namespace this test
makes, so the CNI bridge and the pod's veth live there; the pause image is built locally
and imported into the k8s.io namespace (containerd 1.6 would contact the registry on a
pull). hyperpy's --root is the session's own (the runc options' Root)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import glob
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import (
    HAVE_ARTIFACTS,
    HYPERPY,
    PAUSE_CMD,
    http_get_in,
    kill_processes_under,
    own_netns,
    processes_under,
)
from tests.e2e.conftest import _stop, _umount_below, _wait_for, readme_snippet

pytestmark = pytest.mark.e2e

NETNS = f"hp-cri-{os.getpid()}"
IMAGE = "docker.io/hyperpy/busybox:latest"
PAUSE = "docker.io/hyperpy/pause:latest"
SUBNET = "10.88.77.0/24"
HTTPD = "echo web-started; mkdir -p /www && echo from-the-pod > /www/index.html && " \
        "exec httpd -f -p 8080 -h /www"  # fmt: skip


class Cri:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.sock = str(base / "cri.sock")
        self.root = str(base / "hyperpy-root")  # the shim's Root: hyperpy's --root per ns
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        b = self.base
        (b / "net.d").mkdir()
        (b / "net.d" / "10-hyperpy-test.conflist").write_text(json.dumps({
            "cniVersion": "0.4.0",
            "name": "hyperpy-test",
            "plugins": [{
                "type": "bridge", "bridge": "hpcni0", "isGateway": True, "ipMasq": False,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": SUBNET}]],
                         "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(b / "ipam")},
            }],
        }))  # fmt: skip
        # The README's containerd snippet, with this checkout's hyperpy, and a root of ours.
        runtime = readme_snippet("containerd").replace("/usr/local/bin/hyperpy", HYPERPY)
        (b / "containerd.toml").write_text(
            f"""version = 2
root = "{b}/root"
state = "{b}/state"
[grpc]
  address = "{self.sock}"
[ttrpc]
  address = "{self.sock}.ttrpc"
[debug]
  address = "{b}/debug.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{b}/net.d"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
{runtime}    Root = "{self.root}"
"""
        )
        log = b / "containerd.log"
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{NETNS}", "containerd", "--config",
             str(b / "containerd.toml")],
            stdout=open(log, "w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        _wait_for(self.sock, self.proc, log)
        from hyperpy.image import build

        build(str(b / "busybox.tar"))
        build(str(b / "pause.tar"), "hyperpy/pause:latest", PAUSE_CMD)
        for tar in ("busybox.tar", "pause.tar"):
            res = subprocess.run(["ctr", "-a", self.sock, "-n", "k8s.io", "images", "import",
                                  str(b / tar)], capture_output=True, timeout=120)  # fmt: skip
            assert res.returncode == 0, res.stderr.decode()
        import grpc

        from tests.e2e.cri import load

        self.pb, pb_grpc = load(str(b))
        self.channel = grpc.insecure_channel(f"unix://{self.sock}")
        self.rt = pb_grpc.RuntimeServiceStub(self.channel)
        deadline = time.monotonic() + 30
        while True:  # the CRI plugin comes up after the socket
            try:
                self.rt.Version(self.pb.VersionRequest(), timeout=5)
                break
            except grpc.RpcError as exc:
                if time.monotonic() > deadline:
                    tail = log.read_text()[-3000:]
                    raise AssertionError(f"CRI does not answer: {exc}\n{tail}") from None
                time.sleep(0.3)

    def stop(self) -> None:
        try:
            pods = self.rt.ListPodSandbox(self.pb.ListPodSandboxRequest(), timeout=30).items
            for pod in pods:
                self.rt.StopPodSandbox(self.pb.StopPodSandboxRequest(pod_sandbox_id=pod.id),
                                       timeout=180)  # fmt: skip
                self.rt.RemovePodSandbox(self.pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id),
                                         timeout=180)  # fmt: skip
        except Exception:  # noqa: BLE001 - best effort before the daemon goes
            pass
        if self.proc is not None:
            _stop(self.proc)
        _umount_below(str(self.base))


@pytest.fixture(scope="module")
def cri():
    if not (
        HAVE_ARTIFACTS and shutil.which("containerd") and os.path.exists("/usr/lib/cni/bridge")
    ):
        pytest.skip("needs the kernel and initrd, containerd and containernetworking-plugins")
    with own_netns(NETNS):
        base = Path(tempfile.mkdtemp(prefix="hyperpy-e2e-cri-"))
        c = Cri(base)
        try:
            c.start()
            yield c
        finally:
            c.stop()
            kill_processes_under(c.root)
            shutil.rmtree(base, ignore_errors=True)


def test_a_pod_on_cni_through_the_cri_api(cri):
    pb, rt = cri.pb, cri.rt
    logs = cri.base / "logs"
    logs.mkdir()
    pod_config = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name="web", uid="uid-web-1", namespace="default"),
        hostname="web-pod",
        log_directory=str(logs),
        linux=pb.LinuxPodSandboxConfig(
            security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(network=pb.POD, pid=pb.CONTAINER)
            )
        ),
    )
    pod = rt.RunPodSandbox(
        pb.RunPodSandboxRequest(config=pod_config, runtime_handler="hyperpy"), timeout=180
    ).pod_sandbox_id
    status = rt.PodSandboxStatus(
        pb.PodSandboxStatusRequest(pod_sandbox_id=pod, verbose=True), timeout=30
    )
    ip = status.status.network.ip
    assert ip.startswith("10.88.77."), status
    info = json.loads(status.info["info"])
    netns = next(ns["path"] for ns in info["runtimeSpec"]["linux"]["namespaces"]
                 if ns["type"] == "network")  # fmt: skip

    def container(name: str, args: list[str]) -> str:
        cfg = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=name),
            image=pb.ImageSpec(image=IMAGE),
            command=args,
            log_path=f"{name}.log",
            linux=pb.LinuxContainerConfig(),
        )
        cid = rt.CreateContainer(
            pb.CreateContainerRequest(pod_sandbox_id=pod, config=cfg, sandbox_config=pod_config),
            timeout=180,
        ).container_id
        rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=180)
        return cid

    web = container("web", ["sh", "-c", HTTPD])
    side = container("side", ["sleep", "1000"])
    # the pod IP answers from the host side of CNI's bridge
    assert http_get_in(NETNS, f"http://{ip}:8080/") == "from-the-pod\n"
    # the two containers share the pod's network: localhost
    res = rt.ExecSync(pb.ExecSyncRequest(container_id=side, timeout=60,
                      cmd=["wget", "-qO-", "http://127.0.0.1:8080/"]), timeout=120)  # fmt: skip
    assert (res.exit_code, res.stdout) == (0, b"from-the-pod\n"), res.stderr
    res = rt.ExecSync(pb.ExecSyncRequest(container_id=web, cmd=["sh", "-c", "hostname; exit 3"],
                                         timeout=60), timeout=120)  # fmt: skip
    assert (res.exit_code, res.stdout) == (3, b"web-pod\n")
    # container logs, in CRI's format, where the kubelet reads them
    log = (logs / "web.log").read_text()
    assert " stdout F web-started" in log, log
    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=180)
    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=180)
    # nothing left: no VM, monitor or proxy, no state, no namespace (and so no tap or qdisc)
    deadline = time.monotonic() + 30
    left: list[str] = []
    while time.monotonic() < deadline:
        left = processes_under(cri.root)
        if os.path.isdir(cri.root):
            for ns in os.listdir(cri.root):
                left += [f"{ns}/{e}" for e in os.listdir(os.path.join(cri.root, ns))]
        if os.path.exists(netns):
            left.append(netns)
        if not left:
            break
        time.sleep(0.3)
    assert not left, f"left behind: {left}"


def _pod(cri, name: str, handler: str = "hyperpy", cgroup_parent: str = ""):
    pb = cri.pb
    config = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="default"),
        log_directory=str(cri.base / f"logs-{name}"),
        linux=pb.LinuxPodSandboxConfig(cgroup_parent=cgroup_parent),
    )
    os.makedirs(config.log_directory, exist_ok=True)
    req = pb.RunPodSandboxRequest(config=config, runtime_handler=handler)
    return cri.rt.RunPodSandbox(req, timeout=180).pod_sandbox_id, config


def _container(cri, pod: str, pod_config, name: str, cmd: list[str], resources=None) -> str:
    """Create and start a busybox container in ``pod``; its log is ``NAME.log`` there."""
    pb = cri.pb
    cfg = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name),
        image=pb.ImageSpec(image=IMAGE),
        command=cmd,
        log_path=f"{name}.log",
        linux=pb.LinuxContainerConfig(resources=resources),
    )
    cid = cri.rt.CreateContainer(
        pb.CreateContainerRequest(pod_sandbox_id=pod, config=cfg, sandbox_config=pod_config),
        timeout=180,
    ).container_id
    cri.rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=180)
    return cid


def _exec(cri, cid: str, cmd: list[str]):
    res = cri.rt.ExecSync(cri.pb.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=60),
                          timeout=120)  # fmt: skip
    assert res.exit_code == 0, (cmd, res)
    return res.stdout.decode()


def _remove_pod(cri, pod: str) -> None:
    pb = cri.pb
    cri.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=180)
    cri.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=180)


def _exited(cri, cid: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while True:
        st = cri.rt.ContainerStatus(cri.pb.ContainerStatusRequest(container_id=cid),
                                    timeout=30).status  # fmt: skip
        if st.state == cri.pb.CONTAINER_EXITED:
            return st
        assert time.monotonic() < deadline, st
        time.sleep(0.2)


def test_a_container_oom_killed_in_the_guest_is_oomkilled(cri):
    """The kubelet's OOMKilled: CRI's reason comes from the shim's /tasks/oom, which the
    pod's host cgroup raises when the guest's OOM killer ended the container; a container
    that exits 137 otherwise is an Error."""
    pb, rt = cri.pb, cri.rt
    pod, pod_config = _pod(cri, "oom")
    try:
        got = {}
        for name, cmd in (("hog", ["tail", "/dev/zero"]),
                          ("killed", ["sh", "-c", 'sh -c "kill -9 \\$\\$"; exit $?'])):  # fmt: skip
            cfg = pb.ContainerConfig(
                metadata=pb.ContainerMetadata(name=name),
                image=pb.ImageSpec(image=IMAGE),
                command=cmd,
                log_path=f"{name}.log",
                linux=pb.LinuxContainerConfig(
                    resources=pb.LinuxContainerResources(memory_limit_in_bytes=48 << 20)
                ),
            )
            cid = rt.CreateContainer(pb.CreateContainerRequest(
                pod_sandbox_id=pod, config=cfg, sandbox_config=pod_config), timeout=180,
            ).container_id  # fmt: skip
            rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=180)
            st = _exited(cri, cid)
            got[name] = (st.exit_code, st.reason)
        assert got == {"hog": (137, "OOMKilled"), "killed": (137, "Error")}, got
    finally:
        rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=180)
        rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=180)


def _sleepers(cri, cid: str) -> list[str]:
    """The ``sleep 1001`` processes the container's ps shows (the pod shares one pid
    namespace, and the pause container's loop sleeps 1000)."""
    out = _exec(cri, cid, ["ps", "-o", "pid,args"])
    return [line for line in out.splitlines() if line.split()[1:] == ["sleep", "1001"]]


def test_exec_sync_with_a_timeout_ends_the_process(cri):
    """The kubelet's exec probe with timeoutSeconds: containerd answers DEADLINE_EXCEEDED
    soon after the timeout and SIGKILLs the exec's pid (the proxy); the process it stands
    for is gone from the guest, and nothing of it stays on the host."""
    import grpc

    pb, rt = cri.pb, cri.rt
    pod, pod_config = _pod(cri, "exectimeout")
    try:
        cid = _container(cri, pod, pod_config, "probe", ["sleep", "999999"])
        before = processes_under(cri.root)
        req = pb.ExecSyncRequest(container_id=cid, cmd=["sleep", "1001"], timeout=2)
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            probe = pool.submit(rt.ExecSync, req, timeout=60)
            running = []
            while not running and not probe.done():
                running = _sleepers(cri, cid)
            with pytest.raises(grpc.RpcError) as err:
                probe.result()
        took = time.monotonic() - t0
        assert running, "the exec never ran"
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.value
        assert "timeout 2s exceeded" in err.value.details(), err.value
        assert 2 <= took < 2 + 5, took
        deadline = time.monotonic() + 10
        while (left := _sleepers(cri, cid)) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert not left, f"the timed-out exec still runs in the guest: {left}"
        deadline = time.monotonic() + 10
        while (after := processes_under(cri.root)) != before and time.monotonic() < deadline:
            time.sleep(0.3)
        assert after == before, f"left on the host: {sorted(set(after) - set(before))}"
        # the container itself is untouched: another exec with a timeout it meets works
        res = rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["echo", "ok"], timeout=5),
                          timeout=60)  # fmt: skip
        assert (res.exit_code, res.stdout) == (0, b"ok\n")
    finally:
        _remove_pod(cri, pod)


GUEST_CGROUP = "g=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)"  # no cgroupns on v1


def _host_cgroup_dirs(parent: str) -> list[str]:
    root = "/sys/fs/cgroup"
    if os.path.exists(f"{root}/cgroup.controllers"):
        return [root + parent]
    return [f"{root}/{c}{parent}" for c in os.listdir(root) if os.path.isdir(f"{root}/{c}{parent}")]


def test_stats_are_the_vms_at_the_pod_level(cri):
    """What the kubelet reads: PodSandboxStats is the pod's cgroup parent, which holds the
    sandbox's host cgroup (the monitor, QEMU, the pause proxy) and the members' (their
    proxies): so it counts what the guest's containers use, in memory and CPU.  A member's
    own ContainerStats is its host cgroup, which holds only its proxy: the runc shim reads
    nothing else, and a guest's pages and vCPU time are QEMU's, not one container's
    (docs/compatibility.md, "Resource statistics")."""
    pb, rt = cri.pb, cri.rt
    parent = f"/hyperpy-e2e-{os.getpid()}-stats"
    pod, pod_config = _pod(cri, "stats", cgroup_parent=parent)

    def pod_stats():
        return rt.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=pod),
                                  timeout=30).stats.linux  # fmt: skip

    def guest(cid: str, what: str) -> int:
        out = _exec(cri, cid, ["sh", "-c", f"{GUEST_CGROUP}; {what}"])
        return int(out.split()[-1])

    try:
        hog = _container(cri, pod, pod_config, "hog", ["sleep", "999999"])
        idle = pod_stats().memory.working_set_bytes.value
        # 64 MiB into CRI's /dev/shm, a tmpfs in the guest: its memory cgroup counts it (the
        # root is written through to the host: [vm] files = "faithful")
        _exec(cri, hog, ["dd", "if=/dev/zero", "of=/dev/shm/fill", "bs=1M", "count=64"])
        in_guest = guest(hog, "cat $g/memory.current")
        assert in_guest >= 64 << 20, in_guest
        filled = pod_stats().memory.working_set_bytes.value
        assert filled - idle >= 60 << 20, (idle >> 20, filled >> 20)
        assert filled >= in_guest, (filled >> 20, in_guest >> 20)

        spin = _container(cri, pod, pod_config, "spin", ["sh", "-c", "while :; do :; done"])
        host0 = pod_stats().cpu.usage_core_nano_seconds.value
        guest0 = guest(spin, "sed -n 's/^usage_usec //p' $g/cpu.stat")
        time.sleep(5)
        host1 = pod_stats().cpu.usage_core_nano_seconds.value
        guest1 = guest(spin, "sed -n 's/^usage_usec //p' $g/cpu.stat")
        spun = (guest1 - guest0) * 1000  # ns
        assert spun > 2e9, spun  # it did spin (TCG on 2 cores: most of 5 s)
        # (the two windows are not the same instant: each read is an exec in the guest)
        assert host1 - host0 >= spun * 0.7, (host1 - host0, spun)

        listed = rt.ListContainerStats(pb.ListContainerStatsRequest(
            filter=pb.ContainerStatsFilter(pod_sandbox_id=pod)), timeout=30).stats  # fmt: skip
        assert sorted(s.attributes.metadata.name for s in listed) == ["hog", "spin"], listed
        one = rt.ContainerStats(pb.ContainerStatsRequest(container_id=hog), timeout=30).stats
        assert one.attributes.id == hog and one.memory.timestamp > 0, one  # numbers: see above
        pod_containers = {s.attributes.id for s in pod_stats().containers}
        assert pod_containers == {hog, spin}, pod_containers
    finally:
        _remove_pod(cri, pod)
        for d in _host_cgroup_dirs(parent):
            with contextlib.suppress(OSError):
                os.rmdir(d)


def test_update_container_resources_reaches_the_guest(cri):
    """The kubelet's in-place resize: containerd runs `hyperpy update --resources -`; the
    member's cgroup in the guest gets the new memory limit and CPU quota, and the pod's VM
    follows (docs/resize.md): a member that joins with a limit past the VM's boot size grows
    it, a resize grows its memory and vCPUs, and the container sees them."""
    pb, rt = cri.pb, cri.rt
    pod, pod_config = _pod(cri, "update")
    two = (os.cpu_count() or 1) >= 2
    try:
        res = pb.LinuxContainerResources(memory_limit_in_bytes=300 << 20, cpu_period=100000,
                                         cpu_quota=20000, cpu_shares=256)  # fmt: skip
        cid = _container(cri, pod, pod_config, "resized", ["sleep", "999999"], res)

        def limits() -> list[str]:
            script = f"{GUEST_CGROUP}; cat $g/memory.max $g/cpu.max; grep MemTotal /proc/meminfo"
            out = _exec(cri, cid, ["sh", "-c", script + "; nproc"]).split("\n")
            return [out[0], out[1], str(int(out[2].split()[1]) >= int(out[0]) >> 10), out[3]]

        # the pause container booted the VM at 256 MiB: the member's 300 MiB grew it
        assert limits() == [str(300 << 20), "20000 100000", "True", "1"]
        quota = 200000 if two else 50000
        new = pb.LinuxContainerResources(memory_limit_in_bytes=700 << 20, cpu_period=100000,
                                         cpu_quota=quota, cpu_shares=512)  # fmt: skip
        rt.UpdateContainerResources(
            pb.UpdateContainerResourcesRequest(container_id=cid, linux=new), timeout=60
        )
        assert limits() == [str(700 << 20), f"{quota} 100000", "True", "2" if two else "1"]
        status = rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid), timeout=30)
        got = status.status.resources.linux
        assert (got.memory_limit_in_bytes, got.cpu_quota) == (700 << 20, quota), got
    finally:
        _remove_pod(cri, pod)


def test_reopen_container_log_after_rotation(cri):
    """The kubelet's log rotation: rename the log, ReopenContainerLog, and the container's
    next lines go to a fresh file at log_path (containerd writes the log from the shim's
    pipes, which the proxy holds)."""
    pb, rt = cri.pb, cri.rt
    pod, pod_config = _pod(cri, "logs")
    try:
        cmd = ["sh", "-c", "i=0; while :; do echo line-$i; i=$((i+1)); sleep 0.2; done"]
        cid = _container(cri, pod, pod_config, "talker", cmd)
        log = Path(pod_config.log_directory) / "talker.log"
        _wait_until(lambda: log.exists() and "line-3" in log.read_text())
        rotated = log.with_name("talker.log.1")
        log.rename(rotated)
        rt.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=cid), timeout=60)
        _wait_until(lambda: log.exists() and log.read_text().count(" stdout F line-") >= 3)
        old, new = rotated.read_text(), log.read_text()
        last_old = int(old.rstrip().rsplit("line-", 1)[1])
        first_new = int(new.split("line-", 1)[1].split()[0])
        assert first_new == last_old + 1, (old[-200:], new[:200])  # nothing lost or doubled
        time.sleep(1)
        assert rotated.read_text() == old  # the old file gets nothing more
    finally:
        _remove_pod(cri, pod)


def _wait_until(cond, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _stop_remove_sequence(cri, handler: str) -> tuple[list[tuple[str, str]], list[str]]:
    """The kubelet's repeated stops and removes, each call's outcome (OK or the gRPC code),
    on a pod of ``handler``; and the pod's ids."""
    import grpc

    pb, rt = cri.pb, cri.rt
    pod, pod_config = _pod(cri, f"idem-{handler}", handler=handler)
    done = _container(cri, pod, pod_config, "done", ["true"])
    _exited(cri, done)
    runner = _container(cri, pod, pod_config, "runner", ["sleep", "999999"])
    out: list[tuple[str, str]] = []

    def call(what: str, method, req) -> None:
        try:
            method(req, timeout=180)
            out.append((what, "OK"))
        except grpc.RpcError as exc:
            out.append((what, exc.code().name))

    call("StopContainer exited", rt.StopContainer,
         pb.StopContainerRequest(container_id=done, timeout=5))  # fmt: skip
    call("StopContainer exited again", rt.StopContainer,
         pb.StopContainerRequest(container_id=done, timeout=5))  # fmt: skip
    for what in ("RemoveContainer", "RemoveContainer again"):
        call(what, rt.RemoveContainer, pb.RemoveContainerRequest(container_id=done))
    call("StopContainer removed", rt.StopContainer, pb.StopContainerRequest(container_id=done))
    for what in ("StopPodSandbox (a member running)", "StopPodSandbox again"):
        call(what, rt.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=pod))
    call("StopContainer in a stopped pod", rt.StopContainer,
         pb.StopContainerRequest(container_id=runner))  # fmt: skip
    call("RemoveContainer in a stopped pod", rt.RemoveContainer,
         pb.RemoveContainerRequest(container_id=runner))  # fmt: skip
    for what in ("RemovePodSandbox", "RemovePodSandbox again"):
        call(what, rt.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod))
    call("StopPodSandbox removed", rt.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=pod))
    call("ContainerStatus removed", rt.ContainerStatus,
         pb.ContainerStatusRequest(container_id=runner))  # fmt: skip
    return out, [pod, done, runner]


def test_stops_and_removes_are_idempotent_as_with_runc(cri):
    """StopContainer of an exited container, StopPodSandbox twice, RemoveContainer and
    RemovePodSandbox twice, and calls naming what is gone: each answers as containerd
    answers for runc (compared on a runc pod in the same containerd), and nothing of the
    hyperpy pod is left (state under the shim's root, processes)."""
    if not shutil.which("runc"):
        pytest.skip("needs runc, to compare with")
    runc, _ = _stop_remove_sequence(cri, "runc")
    ours, ids = _stop_remove_sequence(cri, "hyperpy")
    diff = [f"{a[0]}: {a[1]} (runc: {b[1]})" for a, b in zip(ours, runc, strict=True) if a != b]
    assert ours == runc, "\n".join(diff)
    assert dict(ours)["StopPodSandbox again"] == "OK"  # what the kubelet relies on
    assert dict(ours)["RemovePodSandbox again"] == "OK"
    deadline = time.monotonic() + 30
    while True:
        left = [p for p in processes_under(cri.root) if any(i in p for i in ids)]
        ns = Path(cri.root) / "k8s.io"
        left += [e for e in (os.listdir(ns) if ns.is_dir() else []) if e in ids]
        left += [g for i in ids for g in glob.glob(f"/sys/fs/cgroup/**/{i}", recursive=True)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert not left, f"left behind: {left}"
