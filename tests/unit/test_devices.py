"""QEMU command lines built from typed devices, compared as argv lists."""

import json
import os

import pytest

from hyperpy.config import VMConfig
from hyperpy.vm import devices as D
from hyperpy.vm import jail as J
from hyperpy.vm.plan import build_spec
from hyperpy.vm.qemu import Channels


@pytest.fixture
def chans(tmp_path):
    c = Channels(str(tmp_path))
    yield c
    c.close()


def test_microvm_uses_mmio_devices_and_no_acpi(chans):
    cfg = VMConfig(kernel="/k", initrd="/i")
    spec = build_spec(cfg, "tcg", chans, share="/state/shared")
    argv = spec.argv()
    assert argv[0] == "qemu-system-x86_64"
    assert argv[argv.index("-M") + 1].startswith("microvm,acpi=off")
    assert argv[argv.index("-accel") + 1] == "tcg,tb-size=32"  # [vm] tcg_tb_size_mb
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


def test_q35_uses_pci_devices(chans):
    spec = build_spec(VMConfig(machine="q35", kernel="/k", initrd="/i"), "kvm", chans)
    argv = spec.argv()
    assert argv[argv.index("-M") + 1] == "q35"
    assert "virtio-serial-pci,id=vser0" in argv
    assert argv[argv.index("-cpu") + 1] == "host"


def test_vsock_channel(chans):
    spec = build_spec(VMConfig(kernel="/k", initrd="/i"), "tcg", chans, vsock_cid=42)
    argv = spec.argv()
    assert "vhost-vsock-device,guest-cid=42" in argv
    assert "hyperpy.channel=vsock:1024" in argv[argv.index("-append") + 1]
    assert not any("virtserialport" in a for a in argv)


def test_resources_and_icount():
    assert D.Resources(2, 512).args() == ["-smp", "2", "-m", "512M"]
    m = D.Machine(icount=True)
    assert m.args()[-2:] == ["-icount", "shift=0,sleep=off"]


def test_share_keeps_guest_metadata_out_of_the_host_and_remaps_inodes():
    args = D.Share9p("/x", bus="pci").args()
    assert args == [
        "-fsdev",
        "local,id=share0,path=/x,security_model=mapped-xattr,multidevs=remap",
        "-device",
        "virtio-9p-pci,fsdev=share0,mount_tag=hyperpy",
    ]
    assert "security_model=mapped-file" in D.Share9p("/x", model="mapped-file").args()[1]


def test_qemu_gets_descriptors_not_paths_and_runs_its_seccomp_sandbox(chans):
    spec = build_spec(VMConfig(kernel="/k", initrd="/i"), "tcg", chans, share="/s/shared")
    argv = spec.argv()
    assert argv[argv.index("-sandbox") + 1] == (
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
    )
    assert f"socket,id=qmp,fd={chans.qmp_fd}" in argv
    assert f"socket,id=agentch,fd={chans.agent_fd}" in argv
    assert f"socket,id=console,fd={chans.console_fd}" in argv
    assert set(spec.pass_fds()) == {chans.qmp_fd, chans.agent_fd, chans.console_fd}
    assert not any(".sock" in a for a in argv)


def test_jailed_spec_uses_the_jail_paths_and_a_read_only_image_share(chans):
    spec = build_spec(VMConfig(kernel="/k", initrd="/i"), "tcg", chans, share="/s/shared",
                      image="/s/image", jailed=True)  # fmt: skip
    argv = spec.argv()
    assert argv[argv.index("-kernel") + 1] == J.KERNEL
    assert argv[argv.index("-initrd") + 1] == J.INITRD
    assert f"local,id=share0,path={J.SHARE},security_model=mapped-xattr,multidevs=remap" in argv
    assert (f"local,id=share1,path={J.IMAGE},security_model=none,multidevs=remap,readonly=on"
            in argv)  # fmt: skip
    assert "virtio-9p-device,fsdev=share1,mount_tag=hyperpy-image" in argv


def test_jail_plan_holds_only_what_qemu_needs(tmp_path):
    jail = J.plan(root=str(tmp_path / "jail"), uid=2_000_000_123, parent=1,
                  qemu="qemu-system-x86_64", kernel="/k", initrd="/i", share="/s/shared",
                  image="/s/image", devices=("/dev/kvm",))  # fmt: skip
    targets = {b.target: b for b in jail.binds}
    assert set(targets) == {"/usr", J.KERNEL, J.INITRD, J.SHARE, J.IMAGE, "/dev/null",
                            "/dev/zero", "/dev/urandom", "/dev/kvm"}  # fmt: skip
    assert targets["/usr"].kind == "ro" and targets[J.KERNEL].kind == "ro"
    assert targets[J.SHARE].kind == "share" and targets["/dev/kvm"].kind == "dev"
    assert jail.uid == jail.gid == 2_000_000_123 and jail.caps == ("CAP_DAC_OVERRIDE",)
    wrapped = jail.wrap(["qemu-system-x86_64", "-M", "microvm"])
    assert wrapped[1:4] == ["-S", "-c", J.BOOTSTRAP] and wrapped[6] == "--"
    assert os.path.isdir(os.path.join(wrapped[4], "hyperpy", "vm"))
    assert wrapped[7] == jail.binary and wrapped[8:] == ["-M", "microvm"]
    doc = json.loads(wrapped[5])
    assert doc["uid"] == jail.uid and doc["caps"] == list(jail.caps)
    assert [(b["source"], b["target"], b["kind"]) for b in doc["binds"]] == [
        (b.source, b.target, b.kind) for b in jail.binds
    ]


def test_jail_refuses_a_qemu_outside_usr(tmp_path):
    fake = tmp_path / "qemu"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    with pytest.raises(J.JailError, match="outside /usr"):
        J.plan(root="/r", uid=1, parent=1, qemu=str(fake), kernel="/k", initrd="/i", share=None)


def test_tcg_translation_cache_size():
    assert D.Machine(tb_size_mb=32).args()[3] == "tcg,tb-size=32"
    assert D.Machine().args()[3] == "tcg"
    assert D.Machine(accel="kvm", tb_size_mb=32).args()[3] == "kvm"  # TCG's only


def test_template_memory_and_incoming_state_are_inherited_fds():
    mem = D.Memory(7, 256, shared=False)
    assert mem.args() == [
        "-object",
        "memory-backend-file,id=ram,size=256M,mem-path=/proc/self/fd/7,share=off",
        "-machine",
        "memory-backend=ram",
    ]
    assert "share=on" in D.Memory(7, 256, shared=True).args()[1]
    assert D.Incoming(9).args() == ["-incoming", "defer"]  # QMP sets x-ignore-shared first


def test_faithful_files_serve_the_image_read_write_in_passthrough_with_its_capabilities(
    tmp_path, chans
):
    spec = build_spec(VMConfig(kernel="/k", initrd="/i"), "tcg", chans, share="/s/shared",
                      image="/s/image", jailed=True, faithful=True)  # fmt: skip
    assert (f"local,id=share1,path={J.IMAGE},security_model=passthrough,multidevs=remap"
            in spec.argv())  # fmt: skip
    faithful = J.plan(root=str(tmp_path / "jail"), uid=2_000_000_123, parent=1,
                      qemu="qemu-system-x86_64", kernel="/k", initrd="/i", share="/s/shared",
                      image="/s/image", faithful=True)  # fmt: skip
    assert set(faithful.caps) == {
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_DAC_READ_SEARCH",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_MKNOD",
        "CAP_SETFCAP",
    }
    assert faithful.nofile == J.NOFILE
    strict = J.plan(
        root=str(tmp_path / "jail"),
        uid=2_000_000_123,
        parent=1,
        qemu="qemu-system-x86_64",
        kernel="/k",
        initrd="/i",
        share="/s/shared",
    )
    assert strict.caps == ("CAP_DAC_OVERRIDE",)
