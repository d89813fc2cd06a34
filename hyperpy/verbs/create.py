"""``create``: a container's record, its VM (or its place in a pod's), its init's proxy.

Owns the order of create's steps and its cleanup on failure: a create that fails leaves
no process, mount, socket or state directory behind, and whatever can be checked on the
host is checked before a VM boots (:mod:`hyperpy.preflight`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass

from hyperpy.errors import UsageError
from hyperpy.monitor_client import MonitorClient, raise_remote
from hyperpy.proc import spawn_ready
from hyperpy.sandbox.model import Status
from hyperpy.sandbox.record import State, check_id
from hyperpy.sandbox.store import Store
from hyperpy.verbs import cgroup, pod
from hyperpy.verbs.delete import destroy
from hyperpy.verbs.spawn import spawn_proxy, write_pid_file
from hyperpy.verbs.state import run_hooks
from hyperpy.vm import sizing

log = logging.getLogger("hyperpy.runtime")


@dataclass
class CreateOptions:
    bundle: str
    pid_file: str | None = None
    console_socket: str | None = None
    systemd_cgroup: bool = False
    no_pivot: bool = False


def _now_rfc3339() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"


def create(store: Store, cid: str, opts: CreateOptions) -> State:
    from hyperpy import preflight
    from hyperpy.oci.validate import load_bundle

    check_id(cid)  # first: the id names the state dir and the default cgroup
    if opts.pid_file:
        preflight.pid_file(opts.pid_file)
    if opts.console_socket:
        preflight.console_socket(opts.console_socket)
    bundle = os.path.abspath(opts.bundle)
    spec = load_bundle(bundle, systemd_cgroup=opts.systemd_cgroup)
    process = spec.get("process") or {}
    if process.get("terminal") and not opts.console_socket and opts.pid_file:
        raise UsageError(
            "config.json asks for a terminal (/process/terminal) but no --console-socket "
            "was given: pass --console-socket, or set process.terminal to false"
        )
    if opts.console_socket and not process.get("terminal"):
        raise UsageError("--console-socket was given but /process/terminal is false in config.json")
    from hyperpy import share
    from hyperpy.config import load as load_config
    from hyperpy.hostcgroup import relative_path
    from hyperpy.vm.hypervisor import faithful_files

    # a missing bind source fails here, before any VM
    plan = share.plan(spec, bundle, cid, faithful_files(load_config()))
    config = os.path.join(bundle, "config.json")
    preflight.resources(spec, config)
    preflight.spec_fits(spec, plan.guest_spec, config)

    cgroups_path = spec.get("linux", {}).get("cgroupsPath", "")
    host_cgroup = relative_path(cgroups_path, cid, opts.systemd_cgroup)
    d = store.make(cid)
    root = spec.get("root", {}).get("path", "rootfs")
    st = State(
        id=cid,
        bundle=bundle,
        rootfs=root if os.path.isabs(root) else os.path.join(bundle, root),
        created=_now_rfc3339(),
        annotations=spec.get("annotations", {}),
        terminal=bool(process.get("terminal")),
        cgroups_path=cgroups_path,
        host_cgroup=host_cgroup,
        hooks=spec.get("hooks") or {},
    )
    try:
        sandbox = pod.sandbox_of(store, spec, cid)
        st.sandbox = sandbox.id if sandbox else ""
        netns = ""
        if sandbox is None:
            from hyperpy import network

            spec, netns = network.plan(spec)
        spec = pod.resolve_namespace_paths(store, spec, st)  # before a VM is started for it
        # the guest gets the cgroup as the path it resolved to here (systemd's form or a
        # path with colons, as runc takes it without --systemd-cgroup): one resolution
        linux = {**(spec.get("linux") or {}), "cgroupsPath": "/" + host_cgroup}
        spec = {**spec, "linux": linux}
        if sandbox is None:
            store.save(st)
            _boot(store, d, st, spec, netns)
        else:
            pod.join(store, d, st, sandbox)
        monitor = MonitorClient(d, st)
        reply = monitor.request(
            "create", cid=cid, spec=spec, bundle=bundle, state_dir=d, no_pivot=opts.no_pivot
        )
        st.init_proc = reply["proc"]
        st.pid = spawn_proxy(
            d, st.init_proc, opts.console_socket, not opts.console_socket, st.monitor_pid
        )
        cgroup(st.host_cgroup).add(st.pid)
        for kind in ("prestart", "createRuntime", "createContainer"):
            run_hooks(st, kind, Status.CREATING)
        if sandbox is None:  # what CNI or libnetwork's hook put in the pod's namespace
            monitor.request("wire", cid=cid, dns=_pod_resolvers(spec))
        st.status = Status.CREATED.value
        store.save(st)
        if opts.pid_file:
            write_pid_file(opts.pid_file, st.pid)
    except BaseException:
        undo(store, d, st)
        raise
    return st


def undo(store: Store, d: str, st: State) -> None:
    """After a failed create: stop what it started and remove its state. A failure
    here is logged and must not replace the error that failed the create (that one
    says what went wrong; docker shows only the last)."""
    try:
        destroy(d, st)
    except Exception as exc:  # noqa: BLE001 - the create's own error is the one to report
        log.warning("cleaning up the failed create of %s: %r", st.id, exc, exc_info=exc)
    finally:
        try:
            store.remove(st.id)
        except Exception as exc:  # noqa: BLE001 - as above
            log.warning("removing the state of the failed create of %s: %r", st.id, exc)


def _boot(store: Store, d: str, st: State, spec: dict, netns: str) -> None:
    from hyperpy.config import load as load_config

    config = load_config()
    cfg = config.vm
    req = _vm_request(spec, cfg.memory_mb, cfg.overhead_mb)
    if req["limited"]:
        req["ceiling_cgroup"] = st.host_cgroup  # the monitor moves it with the VM's size
    req["network"] = {"netns": netns, "interfaces": config.network.interfaces}
    env = dict(os.environ)
    env["HYPERPY_MONITOR_REQUEST"] = json.dumps(req)
    cg = cgroup(st.host_cgroup)
    cpu = (spec.get("linux", {}).get("resources") or {}).get("cpu") or {}

    def started(mon: subprocess.Popen[bytes]) -> None:
        st.monitor_pid, st.driver = mon.pid, cfg.driver
        store.save(st)
        # Into the pod's cgroup before the monitor starts QEMU, so that the guest's memory
        # is charged there from its first page (v1 does not move charges with a process).
        # The guest enforces the container's limit; the host ceiling is the whole VM plus
        # QEMU's own memory, so the host never OOM-kills the VM for that limit.
        ceiling = (req["memory_mb"] + sizing.QEMU_OVERHEAD_MB) << 20 if req["limited"] else None
        cg.create(memory_limit=ceiling, cpu=cpu)  # the cpuset, before QEMU starts in it
        cg.add(st.monitor_pid)

    # a monitor that reports failure has cleaned up (or does now) before it exits
    _, result = spawn_ready(lambda fd: [sys.executable, "-m", "hyperpy.monitor", d, str(fd)],
                            "the sandbox monitor", cfg.boot_timeout + 30, _monitor_report,
                            env=env, started=started, grace=30)  # fmt: skip
    st.qemu_pid = result.get("qemu_pid", 0)
    cg.set_cpu(cpu)  # shares, quota, period: after the boot, which they would throttle


def _monitor_report(line: str) -> dict:
    """The monitor's ready line: its JSON report, or the error it names raised."""
    try:
        result = json.loads(line) if line else {"ok": False, "error": "the monitor exited"}
    except ValueError:
        result = {"ok": False, "error": f"garbled monitor report: {line!r}"}
    if not result.get("ok"):
        raise_remote(
            {
                "kind": result.get("kind", "VMError"),
                "error": result.get("error", "the sandbox monitor failed"),
            }
        )
    return result


def _pod_resolvers(spec: dict) -> list[str]:
    """Nameservers on the pod's loopback in the resolv.conf bound into the container (docker's
    embedded DNS, 127.0.0.11): the guest reaches them through the monitor's relay."""
    for m in spec.get("mounts") or []:
        if m.get("destination") == "/etc/resolv.conf" and m.get("source"):
            from hyperpy.dns_relay import loopback_nameservers

            return loopback_nameservers(m["source"])
    return []


def _vm_request(spec: dict, default_mb: int, overhead_mb: int) -> dict:
    """VM size from the spec (``vm/sizing.py``: its memory limit plus the guest's own
    overhead; the vCPUs its quota and cpuset need, 0: the configured default)."""
    res = spec.get("linux", {}).get("resources", {}) or {}
    size = sizing.need([res], default_mb, 0, overhead_mb)
    limited = ((res.get("memory") or {}).get("limit") or 0) > 0
    return {"memory_mb": size.memory_mb, "vcpus": size.vcpus, "limited": limited}
