"""What this host offers a pod's VM, found by probing it.

Owns: whether the guest's kernel and initrd exist, the accelerator (KVM only when a probe
guest really ran on it: a device node is not enough, nested PVM hosts have a /dev/kvm that
cannot run guests; the answer is cached in /run once per host boot) and whether vhost-vsock
is usable. The remote driver probes the remote host itself (``vm/remote.py``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time

from hyperpy.config import VMConfig
from hyperpy.errors import ArtifactMissing, ProcessError
from hyperpy.proc import run
from hyperpy.vm.devices import Machine
from hyperpy.vm.plan import BASE_CMDLINE

log = logging.getLogger(__name__)

KVM_PROBE_CACHE = "/run/hyperpy/kvm-probe.json"


def check_artifacts(cfg: VMConfig) -> None:
    for what, path in (("kernel", cfg.kernel), ("initrd", cfg.initrd)):
        if not os.path.exists(path):
            raise ArtifactMissing(
                f"the guest {what} {path} does not exist: run `make kernel initrd` "
                f"(or set [vm] {what} in the hyperpy config)"
            )


def choose_accel(cfg: VMConfig, bare_initrd: str | None = None) -> str:
    if cfg.accel != "auto":
        return cfg.accel
    return "kvm" if kvm_usable(cfg, bare_initrd) else "tcg"


def kvm_usable(cfg: VMConfig, bare_initrd: str | None = None, timeout: float = 10.0) -> bool:
    """Boot the bare initrd under KVM once per host boot; cache the answer in /run."""
    if not os.path.exists("/dev/kvm"):
        return False
    mtime = os.path.getmtime(cfg.kernel) if os.path.exists(cfg.kernel) else 0
    key = f"{cfg.qemu}|{cfg.kernel}|{mtime}"
    try:
        with open(KVM_PROBE_CACHE) as f:
            cached = json.load(f)
        if cached.get("key") == key:
            return bool(cached["usable"])
    except (OSError, ValueError, KeyError):
        pass
    initrd = bare_initrd or os.path.join(os.path.dirname(cfg.initrd), "initrd-bare.img")
    usable = False
    detail = ""
    if os.path.exists(initrd) and os.path.exists(cfg.kernel):
        argv = [
            cfg.qemu,
            *"-nodefaults -no-user-config -display none -no-reboot".split(),
            *Machine(cfg.machine, "kvm").args(),
            "-m",
            "128M",
            "-kernel",
            cfg.kernel,
            "-initrd",
            initrd,
            "-append",
            BASE_CMDLINE + " quiet",
            "-serial",
            "none",
        ]
        start = time.monotonic()
        try:
            res = run(argv, timeout=timeout, check=False)
            usable = res.returncode == 0
            detail = res.stderr.decode(errors="replace")[-300:]
        except ProcessError as exc:  # it did not finish within the timeout, or did not run
            detail = f"the probe guest: {exc}"
        log.debug("KVM probe: usable=%s in %.2fs %s", usable, time.monotonic() - start, detail)
    else:
        detail = "no bare initrd to probe with"
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(KVM_PROBE_CACHE), exist_ok=True)
        tmp = f"{KVM_PROBE_CACHE}.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"key": key, "usable": usable, "detail": detail}, f)
        os.rename(tmp, KVM_PROBE_CACHE)
    return usable


def vsock_usable() -> bool:
    try:
        fd = os.open("/dev/vhost-vsock", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True
