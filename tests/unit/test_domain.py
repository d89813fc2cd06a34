"""The libvirt driver's pure parts: the domain XML rendered from the device plan, the
user libvirt runs QEMU as, and which share sources that user could serve."""

import dataclasses
import os
import xml.etree.ElementTree as ET

import pytest

from agent.protocol import IMAGE_TAG, SHARE_TAG
from hyperpy.config import ConfigError, VMConfig, from_dict
from hyperpy.errors import SpecError
from hyperpy.share import Bind
from hyperpy.vm import domain
from hyperpy.vm.libvirt import check_access, mac_models, qemu_label
from hyperpy.vm.plan import Placeholder, build_spec
from hyperpy.vm.view import domain_name

STATE = "/run/r/pod'\"<&>"


def render(accel="tcg", nics=(), machine="q35", **vm):
    cfg = dataclasses.replace(VMConfig(kernel="/k", initrd="/i", machine=machine), **vm)
    chans = Placeholder()
    chans.console_path = f"{STATE}/console.log"
    spec = build_spec(cfg, accel, chans, share="/s/shared", image="/s/image", nics=nics,
                      memory_mb=300, vcpus=2)  # fmt: skip
    paths = domain.Paths("/v/vmlinux", "/v/initrd.img", "/v/agent.sock", "/v/console.sock",
                         {SHARE_TAG: "/v/shared", IMAGE_TAG: "/v/image"})  # fmt: skip
    xml = domain.render(spec, name="hyperpy-pod-1234abcd", machine=machine, paths=paths,
                        state_dir=STATE, emulator="/usr/bin/qemu-system-x86_64",
                        nics=len(nics))  # fmt: skip
    return spec, ET.fromstring(xml)


def test_the_domain_is_the_plan_of_the_direct_driver():
    spec, dom = render()
    assert dom.get("type") == "qemu"  # TCG
    assert dom.findtext("name") == "hyperpy-pod-1234abcd"
    # booted at its most, the balloon holding what the pod is not given (vm/sizing.py)
    assert dom.findtext("memory") == "2048" and dom.find("memory").get("unit") == "MiB"
    assert dom.findtext("currentMemory") == "300"
    assert dom.find("devices/memballoon").get("model") == "virtio"
    assert dom.findtext("vcpu") == str(max(2, os.cpu_count() or 1))
    assert dom.find("os/type").get("machine") == "q35"
    assert dom.findtext("os/kernel") == "/v/vmlinux"
    assert dom.findtext("os/initrd") == "/v/initrd.img"
    assert dom.findtext("os/cmdline") == spec.kernel.cmdline  # the same kernel command line
    assert "hyperpy.channel=serial:agent" in spec.kernel.cmdline
    assert dom.findtext("features/tcg/tb-cache") == "32"
    assert dom.find("cpu").get("mode") == "maximum"
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        assert dom.findtext(event) == "destroy"
    chan = dom.find("devices/channel")
    assert chan.get("type") == "unix"
    assert chan.find("source").attrib == {"mode": "bind", "path": "/v/agent.sock"}
    assert chan.find("target").attrib == {"type": "virtio", "name": "agent"}
    serial = dom.find("devices/serial")  # to the monitor, which bounds the log
    assert serial.get("type") == "unix"
    assert serial.find("source").attrib == {"mode": "connect", "path": "/v/console.sock"}
    assert dom.find("devices/rng/backend").text == "/dev/urandom"
    fss = {fs.find("target").get("dir"): fs for fs in dom.iterfind("devices/filesystem")}
    assert fss[SHARE_TAG].get("accessmode") == "mapped"  # mapped-xattr, as the direct driver
    assert fss[SHARE_TAG].find("source").get("dir") == "/v/shared"
    assert fss[SHARE_TAG].find("readonly") is None
    assert fss[IMAGE_TAG].get("accessmode") == "squash"  # QEMU's "none", read-only
    assert fss[IMAGE_TAG].find("readonly") is not None
    assert all(fs.get("multidevs") == "remap" for fs in fss.values())
    assert dom.find("devices/memballoon").get("model") == "virtio"  # vm/sizing.py


def test_markup_in_a_path_stays_text():
    _, dom = render()
    meta = dom.find("metadata")[0]
    assert meta.get("state-dir") == STATE
    assert dom.findtext("title").endswith("pod'\"<&>")


def test_nics_get_reserved_root_ports_and_no_device_lands_on_them():
    _, dom = render(nics=((7, "52:54:00:00:00:01"), (8, "52:54:00:00:00:02")))
    ports = [c for c in dom.iterfind("devices/controller") if c.get("model") == "pcie-root-port"]
    assert [p.find("alias").get("name") for p in ports] == ["ua-hyperpy-nic0", "ua-hyperpy-nic1"]
    assert dom.find("devices/interface") is None  # the taps are handed over at start
    # every PCI device has its own slot on the root bus: libvirt places none on a NIC port
    slots = [a.get("slot") for a in dom.iter("address")]
    assert len(slots) == len(set(slots)) and all(
        a.get("bus") == "0x00" for a in dom.iter("address")
    )


def test_kvm_and_icount():
    _, dom = render(accel="kvm")
    assert dom.get("type") == "kvm" and dom.find("cpu").get("mode") == "host-passthrough"
    assert dom.find("features") is None  # no TCG cache on KVM
    _, dom = render(icount=True)
    args = [a.get("value") for a in dom.iter(f"{{{domain.QEMU_NS}}}arg")]
    assert args == ["-icount", "shift=0,sleep=off"]


def test_microvm_is_not_a_libvirt_machine():
    with pytest.raises(ValueError, match="q35"):
        render(machine="microvm")


def test_the_name_is_the_id_and_a_hash_of_the_root():
    a, b = domain_name("/run/a/pod1"), domain_name("/run/b/pod1/")
    assert a.startswith("hyperpy-pod1-") and b.startswith("hyperpy-pod1-") and a != b


CAPS = """<capabilities><host>
  <secmodel><model>none</model><doi>0</doi></secmodel>
  <secmodel><model>dac</model><doi>0</doi>
    <baselabel type='kvm'>+64055:+108</baselabel>
    <baselabel type='qemu'>+64055:+64055</baselabel></secmodel>
</host></capabilities>"""


def test_qemu_label_is_read_from_the_capabilities():
    assert qemu_label(CAPS, "qemu") == (64055, 64055)
    assert qemu_label(CAPS, "kvm") == (64055, 108)
    assert qemu_label("<capabilities><host/></capabilities>", "qemu") == (0, 0)
    assert mac_models(CAPS) == []
    apparmor = CAPS.replace("<model>none</model>", "<model>apparmor</model>")
    assert mac_models(apparmor) == ["apparmor"]


def test_sources_qemu_could_not_serve_are_refused_by_mount(tmp_path):
    ok = tmp_path / "ok"
    ok.mkdir(mode=0o777)
    os.chmod(ok, 0o777)
    private = tmp_path / "private"
    private.mkdir(mode=0o755)  # root's: readable by others, not writable
    uid = 64055
    check_access([Bind(str(ok), "c/mounts/3/ok", True)], uid, uid)
    check_access([Bind(str(private), "c/mounts/4/private", True, readonly=True)], uid, uid)
    with pytest.raises(SpecError) as err:
        check_access([Bind(str(private), "c/mounts/4/private", True)], uid, uid)
    assert err.value.pointer == "/mounts/4/source" and "setfacl" in str(err.value)
    os.chmod(private, 0o700)
    with pytest.raises(SpecError) as err:
        check_access([Bind(str(private), "c/rootfs", True, readonly=True)], uid, uid)
    assert err.value.pointer == "/root/path"
    check_access([Bind(str(private), "c/rootfs", True)], 0, 0)  # QEMU as root: anything


def test_a_file_qemu_may_only_read_is_served_read_only(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    os.chmod(hosts, 0o644)  # root's, as docker's /etc/hosts
    (b,) = check_access([Bind(str(hosts), "c/mounts/7/hosts", False)], 64055, 64055)
    assert b.readonly and b.source == str(hosts)
    os.chmod(hosts, 0o600)
    with pytest.raises(SpecError, match="may read and write"):
        check_access([Bind(str(hosts), "c/mounts/7/hosts", False)], 64055, 64055)


def test_driver_and_libvirt_config_are_checked():
    with pytest.raises(ConfigError, match="vsock"):
        from_dict({"vm": {"driver": "libvirt", "channel": "vsock"}})
    assert from_dict({"vm": {"driver": "libvirt"}}).vm.driver == "libvirt"
    assert from_dict({"libvirt": {"uri": "qemu+ssh://h/system"}}).libvirt.machine == "q35"
    with pytest.raises(ConfigError, match="driver"):
        from_dict({"vm": {"driver": "xen"}})
    with pytest.raises(ConfigError, match="machine"):
        from_dict({"libvirt": {"machine": "microvm"}})
