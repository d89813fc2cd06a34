"""Real containerd and dockerd, each on private paths, with hyperpy registered as a runtime.

One containerd and one dockerd per test session (dockerd uses that containerd, as a host
does). Everything lives under one temporary directory, and the containerd namespaces carry
the session's pid, so the runtime roots (and the leak checks, which look only there) are
the session's own; the daemons are stopped and their mounts and directories removed at the
end, also when tests fail. The busybox image is built by hyperpy.image and imported into
both.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import (
    HAVE_ARTIFACTS,
    HYPERPY,
    kill_processes_under,
    libvirt_leftovers,
    processes_under,
    settled,
)

IMAGE = "docker.io/hyperpy/busybox:latest"
DOCKER_IMAGE = "hyperpy/busybox:latest"
# containerd namespaces of this session: the runc shim keeps hyperpy's --root at
# /run/containerd/runc/<namespace>, so a second session on the machine has roots of its own.
NS = f"hyperpy-e2e-{os.getpid()}"
DOCKER_NS = f"{NS}-moby"

pytestmark = pytest.mark.e2e

needs_daemons = pytest.mark.skipif(
    not (HAVE_ARTIFACTS and shutil.which("containerd") and shutil.which("dockerd")),
    reason="needs the kernel and initrd, containerd and docker.io (make deps artifacts)",
)


README = Path(__file__).resolve().parents[2] / "README.md"


def readme_snippet(name: str) -> str:
    """The fenced block after ``<!-- snippet: name -->`` in the README."""
    text = README.read_text()
    marker = f"<!-- snippet: {name} -->"
    assert marker in text, f"README has no {marker}"
    block = text.split(marker, 1)[1].split("```", 2)[1]
    return block.split("\n", 1)[1]


def _wait_for(path: str, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"daemon did not come up ({path}):\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def _stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _umount_below(path: str) -> None:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(path + "/")), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)


class Daemons:
    """containerd and dockerd; with ``netns`` both run in that network namespace (entered
    with nsenter --net: `ip netns exec` would remount /sys and hide the cgroup v1 mounts),
    dockerd with its default bridge, iptables and published ports, all inside it."""

    def __init__(self, base: Path, netns: str = "", ns: str = NS, env: dict | None = None) -> None:
        self.base = base
        self.netns = netns
        self.ns = ns  # containerd namespace: the shim keeps hyperpy's root under it
        self.env = env  # the daemons' (their shims and hyperpy inherit it)
        self.ctd_sock = str(base / "containerd.sock")
        self.docker_sock = str(base / "docker.sock")
        self.procs: list[subprocess.Popen] = []
        self.driver = "qemu"

    def _in_ns(self, argv: list[str]) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.netns}", *argv] if self.netns else argv

    def ctr(self, *args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ctr", "-a", self.ctd_sock, "-n", self.ns, *args],
            capture_output=True,
            timeout=timeout,
            **kw,
        )

    def ctr_run_argv(self, *args: str) -> list[str]:
        return ["ctr", "-a", self.ctd_sock, "-n", self.ns, "run", "--runtime",
                "io.containerd.runc.v2", "--runc-binary", HYPERPY, *args]  # fmt: skip

    def docker(self, *args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["docker", "-H", f"unix://{self.docker_sock}", *args],
            capture_output=True,
            timeout=timeout,
            **kw,
        )

    def start(self, image_tar: str) -> None:
        b = self.base
        (b / "containerd.toml").write_text(
            f"""version = 2
root = "{b}/containerd/root"
state = "{b}/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{self.ctd_sock}"
[ttrpc]
  address = "{self.ctd_sock}.ttrpc"
[debug]
  address = "{b}/containerd-debug.sock"
"""
        )
        log = b / "containerd.log"
        self.procs.append(
            subprocess.Popen(
                self._in_ns(["containerd", "--config", str(b / "containerd.toml")]),
                stdout=open(log, "w"),
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=self.env,
            )
        )
        _wait_for(self.ctd_sock, self.procs[-1], log)
        dlog = b / "dockerd.log"
        # The README's daemon.json, with this checkout's hyperpy for the installed path.
        daemon_json = readme_snippet("docker").replace("/usr/local/bin/hyperpy", HYPERPY)
        (b / "daemon.json").write_text(daemon_json)
        # dockerd keeps its containers in its own containerd namespace (normally "moby").
        network = ["--iptables=false", "--ip6tables=false", "--bridge=none"]
        if self.netns:
            network = ["--bip", "172.31.250.1/24", "--exec-opt", "native.cgroupdriver=cgroupfs"]
        self.procs.append(
            subprocess.Popen(
                self._in_ns(
                    [
                        "dockerd",
                        "--host",
                        f"unix://{self.docker_sock}",
                        "--data-root",
                        str(b / "docker-data"),
                        "--exec-root",
                        str(b / "docker-exec"),
                        "--pidfile",
                        str(b / "docker.pid"),
                        "--containerd",
                        self.ctd_sock,
                        "--containerd-namespace",
                        f"{self.ns}-moby",
                        "--containerd-plugins-namespace",
                        f"{self.ns}-plugins",
                        *network,
                        "--add-runtime",
                        f"hyperpy={HYPERPY}",
                    ]
                ),  # fmt: skip
                stdout=open(dlog, "w"),
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=self.env,
            )
        )
        _wait_for(self.docker_sock, self.procs[-1], dlog)
        deadline = time.monotonic() + 30
        while self.docker("version").returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"dockerd does not answer:\n{dlog.read_text()[-3000:]}")
            time.sleep(0.2)
        res = self.ctr("images", "import", image_tar)
        assert res.returncode == 0, res.stderr.decode()
        res = self.docker("load", "-i", image_tar)
        assert res.returncode == 0, res.stderr.decode()

    def stop(self) -> None:
        # Containers first, through the daemons, so the runtime cleans up as it would.
        try:
            ids = self.docker("ps", "-aq").stdout.decode().split()
            if ids:
                self.docker("rm", "-f", *ids, timeout=180)
            for task in self.ctr("task", "ls", "-q").stdout.decode().split():
                self.ctr("task", "kill", "-s", "KILL", task)
                self.ctr("task", "delete", "-f", task)
            for c in self.ctr("containers", "ls", "-q").stdout.decode().split():
                self.ctr("containers", "rm", c)
        except (subprocess.TimeoutExpired, OSError):
            pass
        for proc in reversed(self.procs):
            _stop(proc)
        _umount_below(str(self.base))


@pytest.fixture(scope="session", params=("qemu", "libvirt"))
def daemons(request):
    """containerd and dockerd, once with hyperpy on each hypervisor driver ([vm] driver in
    the daemons' HYPERPY_CONFIG, which their shims pass on to hyperpy)."""
    if not (HAVE_ARTIFACTS and shutil.which("containerd") and shutil.which("dockerd")):
        pytest.skip("needs the kernel and initrd, containerd and docker.io")
    from hyperpy.image import build

    base = Path(tempfile.mkdtemp(prefix="hyperpy-e2e-"))
    env, ns = None, NS
    if request.param == "libvirt":
        request.getfixturevalue("libvirtd")
        (base / "hyperpy.toml").write_text('[vm]\ndriver = "libvirt"\n')
        env, ns = dict(os.environ, HYPERPY_CONFIG=str(base / "hyperpy.toml")), f"{NS}-lv"
    d = Daemons(base, ns=ns, env=env)
    d.driver = request.param
    ctd_root = "/run/containerd/runc/" + ns
    try:
        build(str(base / "busybox.tar"))
        d.start(str(base / "busybox.tar"))
        yield d
    finally:
        d.stop()
        kill_processes_under(ctd_root, str(base))
        try:
            os.rmdir(ctd_root)  # the shim's root for our namespace, empty by now
        except OSError:
            pass
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def no_leftovers(daemons):
    """After the test: no monitor, QEMU or proxy of hyperpy, and no state dir, remain."""
    yield
    deadline = time.monotonic() + 20
    left: list[str] = []
    while time.monotonic() < deadline:
        left = processes_under(*runtime_roots(daemons))  # this session's monitors, proxies, QEMUs
        if not left:
            break
        time.sleep(0.2)
    assert not left, f"left behind: {left}"
    left = [x for r in runtime_roots(daemons) for x in settled(lambda r=r: libvirt_leftovers(r))]
    assert not left, f"libvirt domains or views left behind: {left}"
    left = state_left(runtime_roots(daemons))
    assert not left, f"state or mounts left behind: {left}"


def run_in_pty(argv: list[str], send: bytes = b"", timeout: float = 120) -> tuple[int, bytes]:
    """Run argv with a pseudo-terminal as its controlling tty and stdio; (status, output)."""
    import fcntl
    import select
    import termios

    master, slave = os.openpty()

    def ctty() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    p = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True, preexec_fn=ctty
    )
    os.close(slave)
    out = b""
    if send:
        os.write(master, send)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every slave end closed
                    break
                if not chunk:
                    break
                out += chunk
            elif p.poll() is not None:
                break
        rc = p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
        os.close(master)
    return rc, out


# hyperpy's --root under containerd's runc shim, for this session's namespace
CONTAINERD_ROOT = "/run/containerd/runc/" + NS


def runtime_roots(daemons: Daemons) -> list[str]:
    """hyperpy's --root directories of this session: the shim's for our containerd namespace,
    dockerd's (<exec-root>/runtime-<name>/<namespace>, under the session's directory)."""
    return [
        "/run/containerd/runc/" + daemons.ns,
        *glob.glob(str(daemons.base / "docker-exec" / "runtime-*" / f"{daemons.ns}-moby")),
    ]


def state_left(roots: list[str] | tuple[str, ...] = (CONTAINERD_ROOT,)) -> list[str]:
    out = []
    for root in roots:
        if os.path.isdir(root):
            out += [os.path.join(root, e) for e in os.listdir(root)]
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    out += [p for p in points if any(p == r or p.startswith(r + "/") for r in roots)]
    return out
