"""A pod VM's libvirt domain XML, rendered from the same device plan as QEMU's argv.

Owns the mapping from a :class:`~hyperpy.vm.devices.VMSpec` (machine, resources, kernel,
console, agent channel, entropy, the 9p exports) to a transient libvirt domain, and nothing
else: pure, built with :mod:`xml.etree.ElementTree` (never string templates, so no path or
name can inject markup), and compared as text by the unit tests.

Where libvirt and the direct driver differ:

- the machine is ``q35`` (or ``pc``): libvirt 9 has no ``microvm``;
- files are paths libvirt (and QEMU as libvirt's unprivileged user) opens: the kernel,
  initrd and exports are those of the pod's view (``vm/libvirt.py``), the console a unix
  socket of the view that the monitor listens on (it bounds the log), the agent channel a
  unix socket libvirtd binds;
- NICs are not in the XML: their taps live in the pod's network namespace, which libvirtd
  is not in, so the driver hands them to the paused domain (``getfd`` + hotplug) on the
  ``pcie-root-port`` controllers reserved here (aliases ``ua-hyperpy-nicN``);
- the 9p models: the read-write export ``accessmode='mapped'`` (mapped-xattr, as the direct
  driver), the image export ``squash`` + ``<readonly/>`` (QEMU's ``none``, read-only).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from hyperpy.vm.devices import Rng, SerialChannel, Share9p, VMSpec

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
HYPERPY_NS = "https://hyperpy.dev/libvirt/sandbox/1"
MACHINES = ("q35", "pc")


@dataclass(frozen=True)
class Paths:
    """What libvirt opens for this domain, as host paths (the pod's view)."""

    kernel: str
    initrd: str
    agent_socket: str
    console_socket: str
    exports: dict[str, str]  # 9p mount tag -> directory


def nic_port(i: int) -> str:
    """The QEMU id of the PCIe root port reserved for the pod's NIC ``i``."""
    return f"ua-hyperpy-nic{i}"


def render(
    spec: VMSpec,
    *,
    name: str,
    machine: str,
    paths: Paths,
    state_dir: str,
    emulator: str,
    nics: int = 0,
) -> str:
    """The domain XML of ``spec``. ``spec.machine.accel`` chooses ``kvm`` or ``qemu`` (TCG)."""
    if machine not in MACHINES:
        raise ValueError(f"libvirt machine must be one of {MACHINES}, got {machine!r}")
    ET.register_namespace("qemu", QEMU_NS)
    ET.register_namespace("hyperpy", HYPERPY_NS)
    kvm = spec.machine.accel == "kvm"
    dom = ET.Element("domain", type="kvm" if kvm else "qemu")
    _text(dom, "name", name)
    _text(dom, "title", f"hyperpy pod {state_dir.rstrip('/').rsplit('/', 1)[-1]}")
    meta = ET.SubElement(dom, "metadata")
    ET.SubElement(meta, f"{{{HYPERPY_NS}}}sandbox", {"state-dir": state_dir})
    _text(dom, "memory", str(spec.resources.ram_mb), unit="MiB")
    _text(dom, "currentMemory", str(spec.resources.memory_mb), unit="MiB")
    _text(dom, "vcpu", str(spec.resources.cpus))
    if spec.resources.balloon:  # as the direct driver's (devices.Resources): no huge pages
        backing = ET.SubElement(dom, "memoryBacking")
        ET.SubElement(backing, "source", type="memfd")
        ET.SubElement(backing, "access", mode="shared")
    os_ = ET.SubElement(dom, "os")
    _text(os_, "type", "hvm", arch="x86_64", machine=machine)
    _text(os_, "kernel", paths.kernel)
    _text(os_, "initrd", paths.initrd)
    _text(os_, "cmdline", spec.kernel.cmdline)
    if not kvm and spec.machine.tb_size_mb:
        tcg = ET.SubElement(ET.SubElement(dom, "features"), "tcg")
        _text(tcg, "tb-cache", str(spec.machine.tb_size_mb), unit="MiB")
    ET.SubElement(dom, "cpu", mode="host-passthrough" if kvm else "maximum")
    ET.SubElement(dom, "clock", offset="utc")
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        _text(dom, event, "destroy")  # as -no-reboot: a guest that stops ends the pod
    devs = ET.SubElement(dom, "devices")
    _text(devs, "emulator", emulator)
    serial = ET.SubElement(devs, "serial", type="unix")  # to the monitor: it bounds the log
    ET.SubElement(serial, "source", mode="connect", path=paths.console_socket)
    if not isinstance(spec.channel, SerialChannel):
        raise ValueError("the libvirt driver's agent channel is a virtio-serial port")
    # Every PCI device sits on the root bus at a fixed slot, so that libvirt places none
    # on the root ports reserved for NICs (it fills any free port it finds).
    slots = iter(range(2, 32))
    serial_ctl = ET.SubElement(devs, "controller", type="virtio-serial", index="0")
    _address(serial_ctl, next(slots))
    chan = ET.SubElement(devs, "channel", type="unix")
    ET.SubElement(chan, "source", mode="bind", path=paths.agent_socket)
    ET.SubElement(chan, "target", type="virtio", name=spec.channel.name)
    for dev in spec.devices:
        if isinstance(dev, Rng):
            rng = ET.SubElement(devs, "rng", model="virtio")
            _text(rng, "backend", "/dev/urandom", model="random")
            _address(rng, next(slots))
        elif isinstance(dev, Share9p):
            mode = "squash" if dev.readonly else "mapped"
            fs = ET.SubElement(devs, "filesystem", type="mount", accessmode=mode,
                               multidevs="remap")  # fmt: skip
            ET.SubElement(fs, "source", dir=paths.exports[dev.tag])
            ET.SubElement(fs, "target", dir=dev.tag)
            if dev.readonly:
                ET.SubElement(fs, "readonly")
            _address(fs, next(slots))
        # NICs: hotplugged into the paused domain on the ports below (vm/libvirt.py)
    for i in range(nics):
        port = ET.SubElement(devs, "controller", type="pci", index=str(1 + i),
                             model="pcie-root-port")  # fmt: skip
        ET.SubElement(port, "alias", name=nic_port(i))
        _address(port, next(slots))
    ET.SubElement(devs, "controller", type="usb", model="none")
    if spec.resources.balloon:  # vm/sizing.py: <currentMemory> is its target
        balloon = ET.SubElement(devs, "memballoon", model="virtio", freePageReporting="on")
        _address(balloon, next(slots))
    else:
        ET.SubElement(devs, "memballoon", model="none")
    if spec.machine.icount:
        cmd = ET.SubElement(dom, f"{{{QEMU_NS}}}commandline")
        for arg in ("-icount", "shift=0,sleep=off"):
            ET.SubElement(cmd, f"{{{QEMU_NS}}}arg", value=arg)
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode")


def _address(el: ET.Element, slot: int) -> None:
    ET.SubElement(el, "address", type="pci", domain="0x0000", bus="0x00", slot=f"0x{slot:02x}",
                  function="0x0")  # fmt: skip


def _text(parent: ET.Element, tag: str, text: str, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    el.text = text
    return el
