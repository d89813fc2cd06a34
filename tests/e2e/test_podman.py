"""podman on hyperpy, end to end: podman -> conmon -> hyperpy -> QEMU.

podman (Debian's 4.3) runs with its own --root, --runroot and --tmpdir under a directory this
module makes, cgroupfs, the file events backend, and a containers.conf of its own
(CONTAINERS_CONF) whose ``[engine.runtimes]`` is the README's podman snippet with this
checkout's hyperpy. Every podman command runs inside a network namespace this module makes
(entered with nsenter --net: `ip netns exec` would remount /sys and hide the cgroup v1
mounts), so netavark's bridge and firewall rules live there and never on the host.

podman's own rlimits (nofile 1048576, nproc from the host) are kept: runc cannot raise
them here without CAP_SYS_RESOURCE, but hyperpy applies them in the guest, where it can.

Where hyperpy keeps its state: podman 4.3 passes a runtime no --root (only what
``--runtime-flag`` says, which its cleanup process, conmon's exit command, does not pass
on), so hyperpy uses its default, /run/hyperpy. The leak checks look there, at the state dirs
of the containers this module's podman made (their ids from podman's events file), and at
the processes naming them. conmon hands the runtime only ``conmon_env_vars``, so the
session's HYPERPY_* variables (its VM templates) go there.
"""

from __future__ import annotations

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
    settled,
)
from tests.e2e.conftest import _umount_below, readme_snippet, run_in_pty

pytestmark = pytest.mark.e2e

NETNS = f"hp-podman-{os.getpid()}"
IMAGE = "docker.io/hyperpy/busybox:latest"
PAUSE = "docker.io/hyperpy/pause:latest"
HYPERPY_ROOT = "/run/hyperpy"  # hyperpy's default --root: podman passes none
RUN = ("run", "--runtime", "hyperpy")
HTTPD = "mkdir -p /www && echo {} > /www/index.html && exec httpd -f -p {} -h /www"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Podman:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.conf = base / "containers.conf"
        self.events = base / "events.log"

    def argv(self, *args: str) -> list[str]:
        b = self.base
        return ["env", f"CONTAINERS_CONF={self.conf}", "nsenter", f"--net=/run/netns/{NETNS}",
                "podman", "--root", f"{b}/storage",
                "--runroot", f"{b}/run", "--tmpdir", f"{b}/tmp", "--cgroup-manager",
                "cgroupfs", "--events-backend", "file", *args]  # fmt: skip

    def __call__(
        self, *args: str, input: bytes | None = None, timeout: float = 180, cwd: str | None = None
    ) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), input=input, capture_output=True,
                              timeout=timeout, cwd=cwd)  # fmt: skip

    def ok(self, *args: str, timeout: float = 180) -> str:
        res = self(*args, timeout=timeout)
        assert res.returncode == 0, f"podman {args}: {res.stderr.decode()}"
        return res.stdout.decode()

    def write_conf(self) -> None:
        b = self.base
        # conmon starts the runtime with conmon_env_vars only: the session's HYPERPY_*
        # variables (HYPERPY_TEMPLATES, HYPERPY_ARTIFACTS) must be among them.
        conmon_env = [f"PATH={PATH}"] + [f"{k}={v}" for k, v in sorted(os.environ.items())
                                         if k.startswith("HYPERPY_")]  # fmt: skip
        runtimes = readme_snippet("podman").replace("/usr/local/bin/hyperpy", HYPERPY)
        self.conf.write_text(
            f"""[network]
network_backend = "netavark"
network_config_dir = "{b}/networks"

[engine]
events_logger = "file"
events_logfile_path = "{self.events}"
cgroup_manager = "cgroupfs"
tmp_dir = "{b}/tmp"
infra_image = "{PAUSE}"
conmon_env_vars = {json.dumps(conmon_env)}

{runtimes}"""
        )

    def container_ids(self) -> set[str]:
        """Every container this podman ever made (infra containers too)."""
        if not self.events.exists():
            return set()
        out = set()
        for line in self.events.read_text().splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("Type") == "container" and ev.get("ID"):
                out.add(ev["ID"])
        return out

    def state_dirs(self) -> list[str]:
        return [os.path.join(HYPERPY_ROOT, cid) for cid in sorted(self.container_ids())]

    def leftovers(self) -> list[str]:
        """hyperpy's VMs, monitors, proxies and state of our containers, conmon and podman's
        cleanup processes, podman's network namespaces and their taps, bridges in ours."""
        dirs = self.state_dirs()
        left = processes_under(str(self.base), *dirs) if dirs else processes_under(str(self.base))
        left += [d for d in dirs if os.path.lexists(d)]
        with open("/proc/self/mountinfo") as f:
            left += [m for m in (line.split()[4] for line in f)
                     if any(m == d or m.startswith(d + "/") for d in dirs)]  # fmt: skip
        res = subprocess.run(["ip", "-n", NETNS, "-o", "link"], capture_output=True, text=True,
                             timeout=30)  # fmt: skip
        left += [line for line in res.stdout.splitlines() if "hptap" in line]
        return left


@pytest.fixture(scope="module")
def podman():
    missing = [b for b in ("podman", "conmon", "nsenter") if not shutil.which(b)]
    if not os.path.exists("/usr/lib/podman/netavark"):
        missing.append("netavark")
    if missing or not HAVE_ARTIFACTS:
        pytest.skip(f"needs the kernel and initrd and {', '.join(missing) or 'nothing else'} "
                    "(make deps artifacts)")  # fmt: skip
    from hyperpy.image import build

    with own_netns(NETNS):
        base = Path(tempfile.mkdtemp(prefix="hyperpy-e2e-podman-"))
        p = Podman(base)
        try:
            p.write_conf()
            build(str(base / "busybox.tar"))
            build(str(base / "pause.tar"), "hyperpy/pause:latest", PAUSE_CMD)
            for tar in ("busybox.tar", "pause.tar"):
                p.ok("load", "-i", str(base / tar))
            yield p
        finally:
            try:
                p("pod", "rm", "-af", "-t", "0")
                p("rm", "-af", "-t", "0")
            except (subprocess.TimeoutExpired, OSError):
                pass
            for d in p.state_dirs():  # what podman could not remove, removed as hyperpy does
                if os.path.lexists(d):
                    subprocess.run([HYPERPY, "delete", "--force", os.path.basename(d)],
                                   capture_output=True, timeout=60)  # fmt: skip
            kill_processes_under(str(base), *p.state_dirs())
            _umount_below(str(base))
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def clean(podman):
    """After the test, `podman pod rm -f` and `podman rm -af` leave nothing of hyperpy's."""
    yield
    podman.ok("pod", "rm", "-af", "-t", "0")
    podman.ok("rm", "-af", "-t", "0")
    left = settled(podman.leftovers, timeout=30)
    assert not left, f"left behind: {left}"


def test_run_exit_status(podman, clean):
    res = podman(*RUN, "--rm", IMAGE, "sh", "-c", "uname -r; exit 42")
    assert res.returncode == 42, res.stderr.decode()
    assert res.stdout.decode().strip().endswith("-hyperpy"), res.stdout


@pytest.mark.parametrize("oom", [True, False], ids=["oom-killed", "killed-otherwise"])
def test_oom_killed_in_the_guest_reaches_conmon_as_under_runc(podman, clean, tmp_path, oom):
    """conmon learns of an OOM from the memory cgroup of the pid it was given: for hyperpy,
    the proxy's host cgroup, where the proxy makes the guest's OOM kill known. Debian 12's
    conmon 2.1.6 then writes an ``oom`` file into its working directory, while its podman
    4.3 looks for one in the bundle (and passes no --persist-dir): ``podman inspect`` says
    OOMKilled false there under runc too. So this compares with runc side by side, where
    conmon runs in a directory of the test's own: the same exit, the same inspect, and the
    OOM seen by conmon exactly when the container was OOM-killed."""
    cmd = ["tail", "/dev/zero"] if oom else ["sh", "-c", 'sh -c "kill -9 \\$\\$"; exit $?']
    # runc cannot apply podman's default rlimits here (root without CAP_SYS_RESOURCE)
    limits = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096")
    got = {}
    for runtime in ("runc", "hyperpy"):
        cwd = tmp_path / runtime
        cwd.mkdir()
        name = f"oom-{oom}-{runtime}".lower()
        res = podman("run", "--runtime", runtime, *limits, "--name", name, "--memory", "48m",
                     IMAGE, *cmd, cwd=str(cwd))  # fmt: skip
        state = podman.ok("inspect", "--format", "{{.State.OOMKilled}} {{.State.ExitCode}}", name)
        got[runtime] = (res.returncode, state.split(), (cwd / "oom").exists())
        podman.ok("rm", name)
    assert got["hyperpy"] == got["runc"], got
    assert got["hyperpy"][0] == 137 and got["hyperpy"][2] is oom, got


def test_run_stdin_to_stdout(podman, clean):
    data = b"".join(b"line %d\n" % i for i in range(5000))
    res = podman(*RUN, "--rm", "-i", "--network", "none", IMAGE, "sh", "-c", "cat; echo end",
                 input=data)  # fmt: skip
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout == data + b"end\n"


def test_run_tty(podman, clean):
    rc, out = run_in_pty(podman.argv(*RUN, "--rm", "-t", "--network", "none", IMAGE, "sh", "-c",
                                     "tty; [ -t 0 ] && echo stdin-is-a-tty; exit 3"))  # fmt: skip
    assert rc == 3, out
    assert b"/dev/pts/" in out and b"stdin-is-a-tty" in out, out


def test_exec_logs_and_stop(podman, clean):
    podman.ok(*RUN, "-d", "--network", "none", "--name", "stubborn", IMAGE, "sh", "-c",
              "echo started; trap '' TERM; while :; do sleep 0.1; done")  # fmt: skip
    podman.ok(*RUN, "-d", "--network", "none", "--name", "polite", IMAGE, "sh", "-c",
              "trap 'echo terminated; exit 7' TERM; while :; do sleep 0.1; done")  # fmt: skip
    res = podman("exec", "stubborn", "sh", "-c", "echo from exec; exit 6")
    assert (res.returncode, res.stdout) == (6, b"from exec\n"), res.stderr.decode()
    rc, out = run_in_pty(podman.argv("exec", "-it", "stubborn", "sh", "-c", "tty"))
    assert rc == 0 and b"/dev/pts/" in out, out
    # the leak checks look where hyperpy keeps this container's state: they must see it
    cid = podman.ok("inspect", "-f", "{{.Id}}", "stubborn").strip()
    assert processes_under(os.path.join(HYPERPY_ROOT, cid)), cid
    deadline = time.monotonic() + 30
    while b"started" not in podman("logs", "stubborn").stdout:
        assert time.monotonic() < deadline, podman("logs", "stubborn")
        time.sleep(0.2)
    # SIGTERM ignored: SIGKILL after the timeout
    start = time.monotonic()
    podman.ok("stop", "-t", "2", "stubborn")
    took = time.monotonic() - start
    assert 2 <= took < 15, took
    assert podman.ok("inspect", "-f", "{{.State.ExitCode}}", "stubborn").strip() == "137"
    # SIGTERM handled: the container's own status, well before the timeout
    start = time.monotonic()
    podman.ok("stop", "-t", "30", "polite")
    assert time.monotonic() - start < 15
    assert podman.ok("inspect", "-f", "{{.State.ExitCode}}", "polite").strip() == "7"
    assert b"terminated" in podman("logs", "polite").stdout


def test_rm_force_of_a_running_container(podman, clean):
    podman.ok(*RUN, "-d", "--network", "none", "--name", "victim", IMAGE, "sleep", "1000")
    cid = podman.ok("inspect", "-f", "{{.Id}}", "victim").strip()
    podman.ok("rm", "-f", "victim")
    assert podman.ok("ps", "-aq", "--filter", "name=victim").strip() == ""
    left = settled(lambda: processes_under(os.path.join(HYPERPY_ROOT, cid)))
    assert not left and not os.path.lexists(os.path.join(HYPERPY_ROOT, cid)), left


def test_read_only_and_tmpfs_start_with_a_copy(podman, clean):
    """podman's --read-only /run, /tmp, /var/tmp and its --tmpfs are tmpfs mounts with runc's
    ``tmpcopyup``: each starts with what the image has there."""
    out = podman.ok(*RUN, "--rm", "--network", "none", "--read-only", "--tmpfs", "/bin:ro",
                    IMAGE, "/bin/sh", "-c", "touch /x 2>/dev/null || echo root-read-only; "
                    "touch /tmp/t /run/t /var/tmp/t && echo tmp-writable; [ -x /bin/cat ] && "
                    "echo bin-copied; touch /bin/t 2>/dev/null || echo bin-read-only")  # fmt: skip
    assert out.split() == ["root-read-only", "tmp-writable", "bin-copied", "bin-read-only"], out


def test_published_port_on_netavarks_bridge(podman, clean):
    podman.ok(*RUN, "-d", "-p", "8080:80", "--name", "web", IMAGE, "sh", "-c",
              HTTPD.format("published", 80))  # fmt: skip
    ip = podman.ok("inspect", "-f", "{{.NetworkSettings.IPAddress}}", "web").strip()
    assert ip, "no address on podman's default network"
    assert http_get_in(NETNS, f"http://{ip}/") == "published\n"  # the host side of the bridge
    assert http_get_in(NETNS, "http://127.0.0.1:8080/") == "published\n"  # netavark's DNAT


def test_network_none_is_loopback_only(podman, clean):
    out = podman.ok(*RUN, "--rm", "--network", "none", IMAGE, "ip", "-o", "link")
    lines = out.splitlines()
    assert len(lines) == 1 and ": lo:" in lines[0], out


def test_ipc_of_another_container_joins_its_vm(podman, clean):
    """--ipc container:X names X's namespace by its host pid (hyperpy's proxy): the new
    container joins X's VM, with a network of its own there."""
    podman.ok(*RUN, "-d", "--network", "none", "--name", "ipc-base", IMAGE, "sh", "-c",
              "touch /dev/mqueue/q && exec sleep 1000")  # fmt: skip
    out = podman.ok(*RUN, "--rm", "--ipc", "container:ipc-base", "--network", "none", IMAGE,
                    "sh", "-c", "sleep 0.5; ls /dev/mqueue")  # fmt: skip
    assert out == "q\n", out


def test_a_pod_is_one_vm_on_localhost(podman, clean):
    # the infra container takes podman's default runtime: --runtime before the verb
    pod = podman.ok("--runtime", "hyperpy", "pod", "create", "--name", "duo", "--infra-image",
                    PAUSE, "-p", "8081:8080").strip()  # fmt: skip
    podman.ok("--runtime", "hyperpy", "run", "-d", "--pod", "duo", "--name", "duo-web", IMAGE,
              "sh", "-c", HTTPD.format("from-the-pod", 8080))  # fmt: skip
    podman.ok("--runtime", "hyperpy", "run", "-d", "--pod", "duo", "--name", "duo-side", IMAGE,
              "sleep", "1000")  # fmt: skip
    ids = podman.ok("ps", "-aq", "--no-trunc", "--filter", f"pod={pod}").split()
    assert len(ids) == 3, ids  # infra and two members
    dirs = [os.path.join(HYPERPY_ROOT, cid) for cid in ids]
    procs = processes_under(*dirs)
    qemus = [p for p in procs if "qemu-system" in p.split()[1]]
    monitors = [p for p in procs if "hyperpy.monitor" in p]
    assert len(qemus) == 1 and len(monitors) == 1, procs
    # the members talk over the pod's localhost; the published port reaches the pod
    out = podman.ok("exec", "duo-side", "sh", "-c",
                    "for i in $(seq 50); do wget -qO- http://127.0.0.1:8080/ && exit; "
                    "sleep 0.2; done; exit 1")  # fmt: skip
    assert out == "from-the-pod\n", out
    assert http_get_in(NETNS, "http://127.0.0.1:8081/") == "from-the-pod\n"
    podman.ok("pod", "rm", "-f", "-t", "0", "duo")
    left = settled(lambda: processes_under(*dirs) + [d for d in dirs if os.path.lexists(d)])
    assert not left, f"left behind by `podman pod rm -f`: {left}"


def test_diff_and_commit_see_what_the_container_wrote(podman, clean):
    """The root is written through (``[vm] files = "faithful"``): podman's view of the
    container's layer from the host is what the container did, and a commit keeps it."""
    podman.ok(*RUN, "-d", "--network", "none", "--name", "writer", IMAGE, "sh", "-c",
              "echo made-in-guest > /made.txt && touch /ready; sleep 1000")  # fmt: skip
    deadline = time.monotonic() + 60
    while podman("exec", "writer", "test", "-e", "/ready").returncode != 0:
        assert time.monotonic() < deadline, "the container never wrote /ready"
        time.sleep(0.5)
    assert "A /made.txt" in podman.ok("diff", "writer").splitlines()
    podman.ok("commit", "writer", "localhost/hyperpy-committed:test")
    podman.ok("rm", "-f", "-t", "0", "writer")
    try:
        out = podman.ok(*RUN, "--rm", "--network", "none", "localhost/hyperpy-committed:test",
                        "cat", "/made.txt")  # fmt: skip
        assert out.strip() == "made-in-guest"
    finally:
        podman("rmi", "-f", "localhost/hyperpy-committed:test")
