"""The libvirt driver's own promises: a transient domain per pod whose QEMU runs as libvirt's
unprivileged user, the host's files safe from it, and nothing left in libvirt or on the
host after a delete, a killed monitor or a refused create. (The lifecycle, stdio, exec,
isolation, pods, VM death and networking run on both drivers: tests/vm/conftest.py.)"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess

import pytest

from hyperpy.vm.view import VIEW_ROOT, domain_name, view_name
from tests.conftest import (
    ARTIFACTS,
    HYPERPY,
    hyperpy,
    libvirt_leftovers,
    needs_artifacts,
    settled,
)
from tests.libvirtd import URI
from tests.vm.test_lifecycle import create, subreaper, wait_exit  # noqa: F401 - fixture

pytestmark = [pytest.mark.vm, needs_artifacts, pytest.mark.usefixtures("subreaper")]


@pytest.fixture
def on_libvirt(libvirtd, tmp_path, monkeypatch):
    cfg = tmp_path / "libvirt.toml"
    cfg.write_text('[vm]\ndriver = "libvirt"\n')
    monkeypatch.setenv("HYPERPY_CONFIG", str(cfg))


def virsh(*args: str) -> str:
    res = subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return res.stdout


def status(path: str) -> dict[str, str]:
    with open(path) as f:
        return dict(line.split(":", 1) for line in f if ":" in line)


def mounts_below(path: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(path)]


@pytest.mark.usefixtures("on_libvirt")
def test_a_pod_is_a_transient_domain_whose_qemu_is_unprivileged(root, bundle):
    artifacts = {f: os.stat(os.path.join(ARTIFACTS, f)) for f in ("vmlinux", "initrd.img")}
    create(root, bundle(["sleep", "1000"]), "lv1")
    hyperpy(root, "start", "lv1", check=True)
    name = domain_name(os.path.join(root, "lv1"))
    assert name.startswith("hyperpy-lv1-")
    assert name in virsh("list", "--name").split()
    info = virsh("dominfo", name)
    assert "Persistent:     no" in info, info  # transient: nothing stays defined
    with open(os.path.join(root, "lv1", "state.json")) as f:
        qemu_pid = json.load(f)["qemu_pid"]
    with open(f"/proc/{qemu_pid}/cmdline", "rb") as f:
        assert f"guest={name}".encode() in f.read()
    st = status(f"/proc/{qemu_pid}/status")
    uids = {int(u) for u in st["Uid"].split()}
    assert 0 not in uids, st["Uid"]  # real, effective, saved and fs uid: none is root
    assert int(st["CapEff"], 16) == 0 and int(st["CapPrm"], 16) == 0
    # libvirt's DAC driver did not take the shared kernel and initrd (read-only binds)
    for f, before in artifacts.items():
        now = os.stat(os.path.join(ARTIFACTS, f))
        assert (now.st_uid, now.st_gid, now.st_mode) == (
            before.st_uid, before.st_gid, before.st_mode), f  # fmt: skip
    view = os.path.join(VIEW_ROOT, view_name(os.path.join(root, "lv1")))
    vst = os.stat(view)
    assert vst.st_uid == 0 and stat.S_IMODE(vst.st_mode) == 0o750  # QEMU reads, never writes
    assert stat.S_IMODE(os.stat(os.path.join(root, "lv1")).st_mode) == 0o700  # still root's
    assert hyperpy(root, "exec", "lv1", "cat", "/proc/cmdline", check=True).stdout
    hyperpy(root, "delete", "--force", "lv1", check=True)
    assert settled(lambda: libvirt_leftovers(root)) == []
    assert mounts_below(view) == [] and not os.path.exists(view)


@pytest.mark.usefixtures("on_libvirt")
def test_a_killed_monitor_takes_its_domain_with_it(root, bundle):
    pid = create(root, bundle(["sleep", "1000"]), "lv2")
    hyperpy(root, "start", "lv2", check=True)
    name = domain_name(os.path.join(root, "lv2"))
    with open(os.path.join(root, "lv2", "state.json")) as f:
        monitor = json.load(f)["monitor_pid"]
    os.kill(monitor, signal.SIGKILL)
    assert wait_exit(pid) == 255  # the proxy: the VM is gone, never 0
    # AUTODESTROY: libvirtd destroys the domain when the monitor's connection closes
    assert settled(lambda: [d for d in libvirt_leftovers(root) if d == name]) == []
    hyperpy(root, "delete", "--force", "lv2", check=True)  # removes the view it left
    assert settled(lambda: libvirt_leftovers(root)) == []


@pytest.mark.usefixtures("on_libvirt")
def test_a_libvirtd_restart_ends_the_pod_and_leaves_no_domain(root, bundle, libvirtd):
    if not libvirtd.ours:
        pytest.skip("the machine's own libvirtd: only one the tests started is restarted")
    pid = create(root, bundle(["sleep", "1000"]), "lv4")
    hyperpy(root, "start", "lv4", check=True)
    libvirtd.stop()  # the domain keeps running; the monitor's connection closes
    try:
        assert wait_exit(pid, timeout=30) == 255  # the VM is unreachable: never 0
    finally:
        libvirtd.start()
    # AUTODESTROY did not fire (libvirtd went away, not the connection): the monitor
    # destroys the domain through a new connection once libvirtd answers again
    assert settled(lambda: libvirt_leftovers(root), timeout=30) == []
    hyperpy(root, "delete", "--force", "lv4", check=True)


@pytest.mark.usefixtures("on_libvirt")
def test_a_mount_qemu_may_not_write_is_refused_naming_it(root, bundle, tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    b = bundle(["true"])
    with open(f"{b}/config.json") as f:
        spec = json.load(f)
    spec["mounts"].append({"destination": "/data", "type": "bind", "source": str(private),
                           "options": ["rbind", "rw"]})  # fmt: skip
    index = len(spec["mounts"]) - 1
    with open(f"{b}/config.json", "w") as f:
        json.dump(spec, f)
    res = hyperpy(root, "run", "--bundle", b, "lv3")
    assert res.returncode == 3, res.stderr
    err = res.stderr.decode()
    assert f"config.json#/mounts/{index}/source" in err and str(private) in err, err
    assert "setfacl" in err and "read-only" in err, err  # how to fix it
    assert os.listdir(root) == []
    assert settled(lambda: libvirt_leftovers(root)) == []


def test_check_and_env_report_the_driver(libvirtd, tmp_path):
    cfg = tmp_path / "libvirt.toml"
    cfg.write_text('[vm]\ndriver = "libvirt"\n')
    env = dict(os.environ, HYPERPY_CONFIG=str(cfg))
    res = subprocess.run([HYPERPY, "env"], capture_output=True, timeout=60, env=env)
    assert json.loads(res.stdout)["vm"]["driver"] == "libvirt"
    res = subprocess.run([HYPERPY, "check"], capture_output=True, timeout=120, env=env)
    out = res.stdout.decode()
    assert "libvirt" in out and URI in out, out


def test_template_build_says_templates_are_the_qemu_drivers(tmp_path):
    cfg = tmp_path / "libvirt.toml"
    cfg.write_text('[vm]\ndriver = "libvirt"\n')
    env = dict(os.environ, HYPERPY_CONFIG=str(cfg))
    res = subprocess.run([HYPERPY, "template", "build"], capture_output=True, timeout=60, env=env)
    assert res.returncode == 2 and b"qemu driver" in res.stderr, res.stderr
