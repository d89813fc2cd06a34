"""QEMU command lines built from typed devices, compared as argv lists."""

from hyperpy.config import VMConfig
from hyperpy.vm import devices as D
from hyperpy.vm.qemu import build_spec


def test_microvm_uses_mmio_devices_and_no_acpi():
    cfg = VMConfig(kernel="/k", initrd="/i")
    spec = build_spec(cfg, "/state", "tcg", share="/state/shared")
    argv = spec.argv()
    assert argv[0] == "qemu-system-x86_64"
    assert argv[argv.index("-M") + 1].startswith("microvm,acpi=off")
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert "virtio-9p-device,fsdev=share0,mount_tag=hyperpy" in argv
    assert "virtio-serial-device,id=vser0" in argv
    assert "virtserialport,chardev=agentch,name=agent,bus=vser0.0" in argv
    assert "-no-reboot" in argv and "-nodefaults" in argv
    cmdline = argv[argv.index("-append") + 1]
    for word in (
        "console=ttyS0",
        "tsc_early_khz=2000000",
        "no_timer_check",
        "reboot=t",
        "hyperpy.channel=serial:agent",
        "quiet",
    ):
        assert word in cmdline.split()


def test_q35_uses_pci_devices():
    spec = build_spec(VMConfig(machine="q35", kernel="/k", initrd="/i"), "/s", "kvm")
    argv = spec.argv()
    assert argv[argv.index("-M") + 1] == "q35"
    assert "virtio-serial-pci,id=vser0" in argv
    assert argv[argv.index("-cpu") + 1] == "host"


def test_vsock_channel():
    spec = build_spec(VMConfig(kernel="/k", initrd="/i"), "/s", "tcg", vsock_cid=42)
    argv = spec.argv()
    assert "vhost-vsock-device,guest-cid=42" in argv
    assert "hyperpy.channel=vsock:1024" in argv[argv.index("-append") + 1]
    assert not any("virtserialport" in a for a in argv)


def test_resources_and_icount():
    assert D.Resources(2, 512).args() == ["-smp", "2", "-m", "512M"]
    m = D.Machine(icount=True)
    assert m.args()[-2:] == ["-icount", "shift=0,sleep=off"]


def test_share_is_passthrough_and_remaps_inodes():
    args = D.Share9p("/x", bus="pci").args()
    assert args == [
        "-fsdev",
        "local,id=share0,path=/x,security_model=passthrough,multidevs=remap",
        "-device",
        "virtio-9p-pci,fsdev=share0,mount_tag=hyperpy",
    ]
