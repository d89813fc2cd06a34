"""Shared fixtures: the hyperpy binary, a private --root per test, busybox bundles, and the
guarantee checked after every VM test that no QEMU, monitor or proxy process of that test
(found by its private --root) and no state is left behind. A failing VM test gets the
console and monitor logs attached."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hyperpy.config import artifacts_dir

HYPERPY = str(Path(sys.executable).parent / "hyperpy")
ARTIFACTS = artifacts_dir()
HAVE_ARTIFACTS = all(os.path.exists(os.path.join(ARTIFACTS, f)) for f in ("vmlinux", "initrd.img"))
needs_artifacts = pytest.mark.skipif(
    not HAVE_ARTIFACTS,
    reason=f"kernel and initrd are not built in {ARTIFACTS}: run `make kernel initrd`",
)


@pytest.fixture(scope="session", autouse=True)
def session_templates(tmp_path_factory):
    """The VM templates of this test run, apart from the host's (every hyperpy the tests
    start, daemons' shims included, inherits the variable); their keepers are stopped at
    the end, and none may be left."""
    d = tmp_path_factory.mktemp("templates")
    os.environ["HYPERPY_TEMPLATES"] = str(d)
    yield str(d)
    subprocess.run([HYPERPY, "template", "rm", "--all"], capture_output=True, timeout=60)
    assert not processes_under(str(d)), "a template keeper was left running"
    assert not os.listdir(d), f"template files left in {d}: {os.listdir(d)}"


@pytest.fixture(scope="session")
def libvirtd(tmp_path_factory):
    """A libvirtd for the libvirt driver's tests: the machine's, or one started (and
    stopped) here (tests/libvirtd.py)."""
    from tests.libvirtd import Daemon

    with Daemon(str(tmp_path_factory.mktemp("libvirtd"))) as daemon:
        yield daemon


def libvirt_leftovers(root: str) -> list[str]:
    """The libvirt domains and views of the pods under ``root`` (their names carry its
    tag: vm/view.py)."""
    from hyperpy.vm.view import VIEW_ROOT, root_tag
    from tests.libvirtd import domains

    tag = root_tag(root)
    views = os.listdir(VIEW_ROOT) if os.path.isdir(VIEW_ROOT) else []
    return domains("-" + tag) + [f"{VIEW_ROOT}/{v}" for v in views if v.startswith(tag + "-")]


def settled(probe, timeout: float = 20) -> list:
    """``probe()`` once it returns nothing, or what it still returns after ``timeout``."""
    deadline = time.monotonic() + timeout
    left = probe()
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = probe()
    return left


def vms_under(root: str) -> list[str]:
    """The VMs of the pods under ``root``: QEMUs the direct driver started, libvirt
    domains."""
    qemus = [p for p in processes_under(root) if "qemu-system" in p.split()[1]]
    return qemus + [d for d in libvirt_leftovers(root) if not d.startswith("/")]


def qemu_may_write(path: str) -> None:
    """Let the libvirt driver's QEMU user (libvirt's DAC label) write ``path`` with an ACL
    entry, as docs/ARCHITECTURE.md tells operators (the owner the guest sees stays the
    real one); the direct driver's jailed QEMU needs nothing."""
    if not _driver_is_libvirt():
        return
    import libvirt

    from hyperpy.vm.libvirt import qemu_label

    conn = libvirt.open("qemu:///system")
    try:
        uid, gid = qemu_label(conn.getCapabilities(), "qemu")
    finally:
        conn.close()
    subprocess.run(["setfacl", "-m", f"u:{uid}:rwx", path], check=True, timeout=10)


def _driver_is_libvirt() -> bool:
    from hyperpy.config import load

    return load().vm.driver == "libvirt"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def _names(arg: str, path: str) -> bool:
    """``arg`` names ``path`` or a path below it (``--root=R``, ``name=hyperpy:R/ID``, ``R/ID``),
    not a sibling that merely starts the same (``R1`` is not ``R10``)."""
    return re.search(re.escape(path) + r"(?=$|[/,:=\s])", arg) is not None


def processes_under(*paths: str) -> list[str]:
    """``pid argv`` of every process that a test with these private paths started: its
    command line names one of them (or a path below it: the monitor's and proxies' state
    dir), or it runs in one (QEMU's cwd is its state dir).  Nothing else on the machine
    counts, so another test run, or another user of QEMU, cannot fail a leak check."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue  # gone, or a kernel thread
        if not argv[0]:
            continue  # a zombie: it holds nothing
        if any(cwd == p or cwd.startswith(p + "/") or any(_names(a, p) for a in argv)
               for p in paths):  # fmt: skip
            out.append(f"{entry} {' '.join(argv).strip()}")
    return out


def kill_processes_under(*paths: str) -> None:
    """SIGKILL what a test session left running under its own paths (after its daemons
    stopped): the last step of a fixture, never a substitute for a leak check."""
    for line in processes_under(*paths):
        try:
            os.kill(int(line.split()[0]), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


@pytest.fixture
def root(tmp_path_factory, request):
    path = tmp_path_factory.mktemp("root")
    yield str(path)
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    if failed:
        for log in sorted(path.rglob("*.log")):
            sys.stdout.write(f"\n----- {log} -----\n{log.read_text(errors='replace')[-4000:]}")
    # Whatever a test leaves running is cleaned up, but the test fails for it.
    leftovers = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        leftovers = processes_under(str(path)) + libvirt_leftovers(str(path))
        if not leftovers:
            break
        time.sleep(0.2)
    for cid in os.listdir(path):
        subprocess.run(
            [HYPERPY, "--root", str(path), "delete", "--force", cid],
            capture_output=True,
            timeout=60,
        )
    state = [p for p in os.listdir(path)]
    assert not leftovers, f"processes left behind: {leftovers}"
    assert not state, f"state left behind under {path}: {state}"


@pytest.fixture
def bundle(tmp_path):
    """Factory: bundle(args, **spec_overrides) -> bundle dir with a busybox rootfs."""
    from hyperpy.bundle import make_bundle

    counter = iter(range(1000))

    def make(args, **overrides):
        d = tmp_path / f"bundle{next(counter)}"
        d.mkdir()
        make_bundle(str(d), args, **overrides)
        return str(d)

    return make


def hyperpy(
    root: str,
    *args: str,
    input: bytes | None = None,
    timeout: float = 180,
    env: dict | None = None,
    check: bool = False,
) -> subprocess.CompletedProcess:
    res = subprocess.run(
        [HYPERPY, "--root", root, *args], input=input, capture_output=True, timeout=timeout, env=env
    )
    if check and res.returncode != 0:
        raise AssertionError(f"hyperpy {args} exited {res.returncode}: {res.stderr.decode()}")
    return res


def http_get_in(netns: str, url: str, timeout: float = 60) -> str:
    """GET ``url`` from network namespace ``netns`` (busybox wget, entered with nsenter),
    retrying while the server starts; the body."""
    deadline = time.monotonic() + timeout
    res = None
    while time.monotonic() < deadline:
        res = subprocess.run(
            ["nsenter", f"--net=/run/netns/{netns}", "timeout", "5", "busybox", "wget", "-qO-",
             url], capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        if res.returncode == 0:
            return res.stdout
        time.sleep(0.5)
    raise AssertionError(f"{url}: no answer from {netns}: {res.stderr if res else ''}")


# A pod's pause container: waits, ends on TERM or INT (the CRI tests', podman's infra's)
PAUSE_CMD = ["sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 1000 & wait $!; done"]


@contextlib.contextmanager
def own_netns(name: str, loopback: bool = True):
    """A network namespace of the test's own (``/run/netns/NAME``), removed after: the
    only place tests make interfaces, bridges and firewall rules."""
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        if loopback:
            subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=30)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], timeout=30)
