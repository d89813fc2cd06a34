"""`hyperpy check`: can this host run hyperpy, and how to fix what is missing.

Each check is a function returning a :class:`Result`; FAIL means containers cannot run, WARN
means they run but worse (no KVM: TCG is several times slower; no vhost-vsock: the agent
talks over virtio-serial).  Checks try the real thing where it is cheap (KVM is judged by
booting the bare initrd on it, not by /dev/kvm existing).
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass

from hyperpy.config import VMConfig

OK, WARN, FAIL = "ok", "warn", "FAIL"
MIN_QEMU = (5, 0)  # virtio-9p multidevs=remap and the microvm machine's options


@dataclass
class Result:
    status: str
    name: str
    detail: str
    fix: str = ""


def qemu(cfg: VMConfig) -> Result:
    path = shutil.which(cfg.qemu)
    if not path:
        return Result(FAIL, "qemu", f"{cfg.qemu} not found", "apt-get install qemu-system-x86")
    from hyperpy.errors import ProcessError
    from hyperpy.proc import run

    try:
        out = run([path, "--version"], timeout=30).stdout.decode(errors="replace")
    except ProcessError as exc:
        return Result(FAIL, "qemu", f"{path} --version failed: {exc}", "reinstall qemu-system-x86")
    m = re.search(r"version (\d+)\.(\d+)", out)
    version = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    if version < MIN_QEMU:
        return Result(FAIL, "qemu", f"{path} is {version}, older than {MIN_QEMU}",
                      "install QEMU 5.0 or newer")  # fmt: skip
    return Result(OK, "qemu", f"{path} {version[0]}.{version[1]}")


def artifacts(cfg: VMConfig) -> Result:
    missing = [p for p in (cfg.kernel, cfg.initrd) if not os.path.exists(p)]
    if missing:
        return Result(FAIL, "guest kernel and initrd", f"missing: {', '.join(missing)}",
                      "make kernel initrd (or set [vm] kernel/initrd in the config)")  # fmt: skip
    sizes = ", ".join(f"{p} {os.path.getsize(p) >> 20} MiB" for p in (cfg.kernel, cfg.initrd))
    return Result(OK, "guest kernel and initrd", sizes)


def accelerator(cfg: VMConfig) -> Result:
    from hyperpy.config import artifacts_dir
    from hyperpy.vm import probes

    if cfg.driver == "remote":
        return Result(OK, "accelerator", "the remote host's (the hypervisor driver line)")
    if not os.path.exists("/dev/kvm"):
        return Result(WARN, "accelerator", "no /dev/kvm: guests run under TCG (slower)",
                      "enable KVM (modprobe kvm_intel/kvm_amd; nested virtualisation)")  # fmt: skip
    bare = os.path.join(artifacts_dir(), "initrd-bare.img")
    if not os.path.exists(bare) or not os.path.exists(cfg.kernel):
        return Result(WARN, "accelerator", "/dev/kvm exists but was not tried (no bare initrd)",
                      "make initrd")  # fmt: skip
    if probes.kvm_usable(cfg, bare):
        return Result(OK, "accelerator", "KVM: a probe guest booted on it")
    return Result(
        WARN,
        "accelerator",
        "/dev/kvm exists but a probe guest did not boot on it: guests run under TCG (slower)",
        "check nested virtualisation support",
    )


def channel(cfg: VMConfig) -> Result:
    from hyperpy.vm import probes

    if cfg.driver != "qemu":
        how = "relayed over SSH" if cfg.driver == "remote" else "a unix socket libvirtd binds"
        return Result(OK, "agent channel", f"virtio-serial, {how}")
    if probes.vsock_usable():
        return Result(OK, "agent channel", "vhost-vsock available: vsock")
    return Result(WARN, "agent channel", "no usable /dev/vhost-vsock: virtio-serial is used",
                  "modprobe vhost_vsock for the vsock channel")  # fmt: skip


def cgroups(cfg: VMConfig) -> Result:
    from hyperpy.hostcgroup import ROOT, V1_CONTROLLERS, is_v2

    if is_v2(ROOT):
        layout, probe = "v2 (unified)", ROOT
    else:
        have = [c for c in V1_CONTROLLERS if os.path.isdir(os.path.join(ROOT, c))]
        if not have:
            return Result(FAIL, "cgroups", f"no cgroup hierarchy under {ROOT}",
                          "mount cgroup2 on /sys/fs/cgroup")  # fmt: skip
        layout, probe = f"v1 ({', '.join(have)})", os.path.join(ROOT, have[0])
    if not os.access(probe, os.W_OK):
        return Result(FAIL, "cgroups", f"{layout}, but {probe} is not writable",
                      "run as root with /sys/fs/cgroup mounted read-write")  # fmt: skip
    return Result(OK, "cgroups", layout)


def host_tools(cfg: VMConfig) -> Result:
    missing = [t for t in ("mount", "umount") if not shutil.which(t)]
    if missing:
        return Result(FAIL, "host tools", f"missing {missing}", "apt-get install util-linux")
    if os.geteuid() != 0:
        return Result(FAIL, "privileges", "not root: bind mounts and cgroups need root",
                      "run hyperpy as root (rootless mode is not supported)")  # fmt: skip
    return Result(OK, "host tools", "mount, umount; running as root")


def driver(cfg: VMConfig) -> Result:
    """Who starts QEMU; for libvirt, the connection tried and the user QEMU will run as."""
    if cfg.driver == "remote":
        from hyperpy.config import load
        from hyperpy.errors import VMError
        from hyperpy.vm.remote import probe

        try:
            return Result(OK, "hypervisor driver", "remote: " + probe(cfg, load().remote))
        except VMError as exc:
            return Result(FAIL, "hypervisor driver", f"remote: {exc}")
    if cfg.driver != "libvirt":
        return Result(OK, "hypervisor driver", "qemu: hyperpy starts QEMU itself, jailed")
    from hyperpy.config import load

    uri = load().libvirt.uri
    try:
        from hyperpy.errors import VMError
        from hyperpy.vm.libvirt import mac_models, open_within, qemu_label

        conn = open_within(uri, 10.0)
    except ImportError:
        return Result(FAIL, "hypervisor driver", "libvirt: libvirt-python is not installed",
                      "make deps")  # fmt: skip
    except VMError as exc:
        return Result(FAIL, "hypervisor driver", f"libvirt: {exc}",
                      "start libvirtd, or set [libvirt] uri")  # fmt: skip
    try:
        version = conn.getLibVersion()
        caps = conn.getCapabilities()
    finally:
        conn.close()
    uid, gid = qemu_label(caps, "qemu")
    mac = mac_models(caps)
    v = f"{version // 1000000}.{version // 1000 % 1000}.{version % 1000}"
    user = f"uid {uid}, gid {gid}" if uid else "root (libvirt's DAC driver is off)"
    detail = f"libvirt {v} at {uri}: QEMU runs as {user}, {'/'.join(mac) or 'no MAC driver'}"
    if not uid:
        return Result(WARN, "hypervisor driver", detail, "turn on libvirt's DAC driver")
    if not mac:
        return Result(WARN, "hypervisor driver", detail + ": every pod's QEMU runs as that "
                      "one user, unseparated: a guest that takes over its QEMU reaches the "
                      "other pods' QEMUs and views",
                      "enable AppArmor or SELinux for libvirt (its security_driver)")  # fmt: skip
    return Result(OK, "hypervisor driver", detail)


def confinement(cfg: VMConfig) -> Result:
    """QEMU's jail as configured, tried where cheap: the fd mount API, QEMU's seccomp."""
    from agent import linux
    from hyperpy.config import load
    from hyperpy.vm import devices, jail

    if cfg.driver == "remote":
        return Result(WARN, "confinement", "on the remote host QEMU runs as the SSH user with "
                      "its seccomp sandbox, without hyperpy's jail: confine that host by its "
                      "own means")  # fmt: skip
    if cfg.driver == "libvirt":
        return Result(OK, "confinement", "libvirt's (see the hypervisor driver line): its DAC "
                      "user, MAC labels if any, mount namespace for /dev, cgroups and seccomp "
                      "sandbox; hyperpy's jail is the qemu driver's")  # fmt: skip
    jcfg = load().jail
    if not jcfg.enabled:
        return Result(WARN, "confinement", "QEMU runs as root, unconfined ([jail] enabled = "
                      "false)", "set [jail] enabled = true")  # fmt: skip
    try:
        jail.plan(root="/", uid=jcfg.uid_base, parent=0, qemu=cfg.qemu, kernel=cfg.kernel,
                  initrd=cfg.initrd, share=None)  # fmt: skip
        os.close(linux.openat2(-100, ".", os.O_PATH, linux.RESOLVE_BENEATH))
    except OSError as exc:
        return Result(FAIL, "confinement", f"the kernel lacks openat2/open_tree ({exc})",
                      "Linux 5.12 or newer is needed")  # fmt: skip
    except jail.JailError as exc:
        return Result(FAIL, "confinement", str(exc))
    probe = [cfg.qemu, *devices.SANDBOX, "-M", "none", "-display", "none", "-nodefaults",
             "-S", "-qmp", "stdio"]  # fmt: skip
    from hyperpy.proc import run

    res = run(probe, input=b'{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n',
              timeout=20, check=False)  # fmt: skip
    if res.returncode != 0:
        return Result(FAIL, "confinement", "QEMU's seccomp sandbox does not start: "
                      + res.stderr.decode(errors="replace").strip()[-200:],
                      "install a QEMU built with seccomp (Debian's is)")  # fmt: skip
    from hyperpy.vm.hypervisor import faithful_files

    if faithful_files(load()):
        caps, files = (", ".join(c[4:] for c in jail.FAITHFUL_CAPS), "files written through "
                       "(9p passthrough, nodev; [vm] files = faithful: docs/files.md)")  # fmt: skip
    else:
        caps, files = "DAC_OVERRIDE", "image read-only, volumes 9p mapped-xattr (files strict)"
    return Result(OK, "confinement", f"QEMU jailed: uid/gid {jcfg.uid_base}+monitor pid, own "
                  f"mount namespace and root, capabilities {caps} only, no_new_privs, seccomp "
                  f"sandbox; {files}")  # fmt: skip


def resize(cfg: VMConfig) -> Result:
    """How far ``update`` can grow a pod's VM (docs/resize.md)."""
    if not cfg.max_memory_mb:
        return Result(WARN, "resize", "[vm] max_memory_mb = 0: a pod's memory is fixed at "
                      "boot; update changes only its cgroup", "set [vm] max_memory_mb")  # fmt: skip
    try:
        with open(cfg.kernel + ".config") as f:
            balloon = "CONFIG_VIRTIO_BALLOON=y" in f.read()
    except OSError:
        balloon = True  # a kernel built elsewhere: its own word at boot
    if not balloon:
        return Result(FAIL, "resize", f"{cfg.kernel} has no virtio balloon (its .config lacks "
                      "CONFIG_VIRTIO_BALLOON): pods would see all of max_memory_mb",
                      "make kernel")  # fmt: skip
    vcpus = cfg.max_vcpus or os.cpu_count() or 1
    return Result(OK, "resize", f"update grows a pod's VM up to {cfg.max_memory_mb} MiB and "
                  f"{vcpus} vCPUs (a balloon, vCPUs onlined in the guest)")  # fmt: skip


def python_deps(cfg: VMConfig) -> Result:
    missing = []
    extra = {"libvirt": ("libvirt",), "remote": ("paramiko",)}.get(cfg.driver, ())
    for mod in ("click", "jsonschema", "qemu.qmp", *extra):
        try:
            importlib.import_module(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        return Result(FAIL, "python packages", f"missing {missing}", "make deps")
    return Result(OK, "python packages", ", ".join(("click", "jsonschema", "qemu.qmp", *extra)))


CHECKS: list[Callable[[VMConfig], Result]] = [
    driver, qemu, artifacts, accelerator, channel, cgroups, host_tools, confinement,
    resize, python_deps,
]  # fmt: skip


def run_all(cfg: VMConfig) -> list[Result]:
    out = []
    for check in CHECKS:
        try:
            out.append(check(cfg))
        except Exception as exc:  # noqa: BLE001 - a broken check is itself a finding
            out.append(Result(FAIL, check.__name__, f"the check failed: {exc}"))
    return out
