"""The OCI operations, as runc performs them, orchestrating store, monitor and proxies.

Owns the order of each operation's steps and its cleanup on failure: a create that fails
leaves no process, mount, socket or state directory behind, and whatever can be checked on
the host is checked before a VM boots (:mod:`hyperpy.preflight`). Imports stay lean: ``state``,
``kill`` and ``start`` run for every container the shim manages, so jsonschema and asyncio
are imported only by the operations that need them.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import logging
import os
import re
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent import protocol as P
from hyperpy import hot
from hyperpy.errors import (
    ContainerNotFound,
    HyperpyError,
    SpecError,
    UsageError,
    VMError,
)
from hyperpy.monitor_client import MonitorClient, raise_remote
from hyperpy.sandbox import model
from hyperpy.sandbox.model import Status
from hyperpy.sandbox.store import State, Store, check_id

if TYPE_CHECKING:
    from hyperpy.hostcgroup import HostCgroup

log = logging.getLogger(__name__)


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


def _write_pid_file(path: str, pid: int) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.rename(tmp, path)


def _read_ready(fd: int, timeout: float, what: str) -> str:
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise VMError(f"{what} did not become ready within {timeout:.0f}s")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


def _spawn_detached(
    argv: list[str],
    pass_fds: tuple[int, ...],
    env: dict | None = None,
    stdio: bool = False,
    session: bool = True,
) -> subprocess.Popen:
    """Start a helper; unless ``stdio``, it holds none of our stdin/stdout/stderr."""
    null = subprocess.DEVNULL
    return subprocess.Popen(
        argv,
        stdin=None if stdio else null,
        stdout=None if stdio else null,
        stderr=None if stdio else null,
        pass_fds=pass_fds,
        close_fds=True,
        start_new_session=session,
        env=env,
    )


class Runtime:
    def __init__(self, root: str, systemd_cgroup: bool = False) -> None:
        self.store = Store(root)
        self.systemd_cgroup = systemd_cgroup

    # --- reading ------------------------------------------------------------------------
    def status(self, st: State) -> Status:
        return hot.current_status(
            self.store.dir(st.id), st.status, st.monitor_pid, st.monitor_start
        )

    def state(self, cid: str) -> dict:
        return hot.state(self.store.root, cid)

    def list(self) -> list[dict]:
        out = []
        for cid in self.store.ids():
            try:
                out.append(self.state(cid))
            except ContainerNotFound:
                continue
        return out

    # --- create -------------------------------------------------------------------------
    def create(self, cid: str, opts: CreateOptions) -> State:
        from hyperpy import preflight
        from hyperpy.oci.validate import load_bundle

        check_id(cid)  # first: the id names the state dir and the default cgroup
        if opts.pid_file:
            preflight.pid_file(opts.pid_file)
        if opts.console_socket:
            preflight.console_socket(opts.console_socket)
        bundle = os.path.abspath(opts.bundle)
        spec = load_bundle(bundle, systemd_cgroup=opts.systemd_cgroup or self.systemd_cgroup)
        process = spec.get("process") or {}
        if process.get("terminal") and not opts.console_socket and opts.pid_file:
            raise UsageError(
                "config.json asks for a terminal (/process/terminal) but no --console-socket "
                "was given: pass --console-socket, or set process.terminal to false"
            )
        if opts.console_socket and not process.get("terminal"):
            raise UsageError(
                "--console-socket was given but /process/terminal is false in config.json"
            )
        from hyperpy import share
        from hyperpy.config import load as load_config
        from hyperpy.hostcgroup import relative_path
        from hyperpy.vm.hypervisor import faithful_files

        # a missing bind source fails here, before any VM
        plan = share.plan(spec, bundle, cid, faithful_files(load_config()))
        config = os.path.join(bundle, "config.json")
        preflight.resources(spec, config)
        preflight.spec_fits(spec, plan.guest_spec, config)

        systemd = opts.systemd_cgroup or self.systemd_cgroup
        host_cgroup = relative_path(spec.get("linux", {}).get("cgroupsPath", ""), cid, systemd)
        d = self.store.make(cid)
        root = spec.get("root", {}).get("path", "rootfs")
        st = State(
            id=cid,
            bundle=bundle,
            rootfs=root if os.path.isabs(root) else os.path.join(bundle, root),
            created=_now_rfc3339(),
            annotations=spec.get("annotations", {}),
            terminal=bool(process.get("terminal")),
            cgroups_path=spec.get("linux", {}).get("cgroupsPath", ""),
        )
        st.host_cgroup = host_cgroup
        st.hooks = spec.get("hooks") or {}
        try:
            sandbox = self._sandbox_of(spec, cid)
            st.sandbox = sandbox.id if sandbox else ""
            netns = ""
            if sandbox is None:
                from hyperpy import network

                spec, netns = network.plan(spec)
            spec = self._resolve_namespace_paths(spec, st)  # before a VM is started for it
            # the guest gets the cgroup as the path it resolved to here (systemd's form or a
            # path with colons, as runc takes it without --systemd-cgroup): one resolution
            linux = {**(spec.get("linux") or {}), "cgroupsPath": "/" + host_cgroup}
            spec = {**spec, "linux": linux}
            if sandbox is None:
                self.store.save(st)
                self._boot(d, st, spec, netns)
            else:
                self._join(d, st, sandbox)
            reply = MonitorClient(d).request(
                "create", cid=cid, spec=spec, bundle=bundle, state_dir=d, no_pivot=opts.no_pivot
            )
            st.init_proc = reply["proc"]
            st.pid = self._spawn_proxy(
                d, st.init_proc, opts.console_socket, not opts.console_socket, st.monitor_pid
            )
            self._cgroup(st).add(st.pid)
            for kind in ("prestart", "createRuntime", "createContainer"):
                self._hooks(st, kind, Status.CREATING)
            if sandbox is None:  # what CNI or libnetwork's hook put in the pod's namespace
                MonitorClient(d).request("wire", cid=cid, dns=_pod_resolvers(spec))
            st.status = Status.CREATED.value
            self.store.save(st)
            if opts.pid_file:
                _write_pid_file(opts.pid_file, st.pid)
        except BaseException:
            self._undo_create(d, st)
            raise
        return st

    def _undo_create(self, d: str, st: State) -> None:
        """After a failed create: stop what it started and remove its state. A failure
        here is logged and must not replace the error that failed the create (that one
        says what went wrong; docker shows only the last)."""
        try:
            self._destroy(d, st)
        except Exception as exc:  # noqa: BLE001 - the create's own error is the one to report
            log.warning("cleaning up the failed create of %s: %r", st.id, exc, exc_info=exc)
        finally:
            try:
                self.store.remove(st.id)
            except Exception as exc:  # noqa: BLE001 - as above
                log.warning("removing the state of the failed create of %s: %r", st.id, exc)

    # --- pods: several containers in one VM ----------------------------------------------
    def _sandbox_of(self, spec: dict, cid: str) -> State | None:
        """The container whose VM this one joins, from the annotations CRI sets (or
        ``io.hyperpy.sandbox``); None when it gets a VM of its own."""
        ann = spec.get("annotations") or {}
        key = ""
        if ann.get(SANDBOX_ANNOTATION):
            key = SANDBOX_ANNOTATION
        elif ann.get(CRI_TYPE) == "container" and ann.get(CRI_SANDBOX):
            key = CRI_SANDBOX
        if not key:
            return self._namespace_owner(spec)
        if ann[key] == cid:
            return None
        pointer = "/annotations/" + key.replace("~", "~0").replace("/", "~1")
        try:
            sandbox = self.store.load(ann[key])
        except ContainerNotFound:
            raise SpecError(
                f"sandbox {ann[key]!r} does not exist under {self.store.root}: create it first",
                pointer,
            ) from None
        if sandbox.sandbox:
            sandbox = self.store.load(sandbox.sandbox)
        if self.status(sandbox) == Status.STOPPED:
            raise SpecError(f"sandbox {sandbox.id!r} is stopped: its VM is gone", pointer)
        return sandbox

    def _by_pid(self) -> dict[int, State]:
        """The containers under this root by the host pid they report (their proxy's)."""
        out = {}
        for other in self.store.ids():
            try:
                o = self.store.load(other)
            except HyperpyError:
                continue
            if o.pid:
                out[o.pid] = o
        return out

    def _namespace_owner(self, spec: dict) -> State | None:
        """The sandbox whose namespaces a container asks to share by naming one of its
        containers' namespaces by pid (docker's ``--network container:ID``, podman's
        ``--ipc container:ID`` or a pod's members): a guest's namespaces cannot be shared
        by another VM, so the container joins that VM. The network decides first: a
        network path naming no container here (a runc container's, say) is the network of
        a VM of the container's own."""
        nss = (spec.get("linux") or {}).get("namespaces") or []
        nss = sorted(nss, key=lambda ns: ns.get("type") != "network")
        by_pid = None
        for ns in nss:
            m = re.fullmatch(r"/proc/(\d+)/ns/\w+", ns.get("path") or "")
            if not m:
                continue
            by_pid = self._by_pid() if by_pid is None else by_pid
            owner = by_pid.get(int(m.group(1)))
            if owner is None:
                if ns.get("type") == "network":
                    return None
                continue
            sandbox = self.store.load(owner.sandbox) if owner.sandbox else owner
            if self.status(sandbox) == Status.STOPPED:
                raise SpecError(f"container {owner.id!r}, whose namespaces this one joins, "
                                "is stopped", "/linux/namespaces")  # fmt: skip
            return sandbox
        return None

    def _join(self, d: str, st: State, sandbox: State) -> None:
        """Use the sandbox's VM: its monitor socket appears in our state dir."""
        st.monitor_pid, st.qemu_pid = sandbox.monitor_pid, sandbox.qemu_pid
        os.symlink(os.path.join(self.store.dir(sandbox.id), "monitor.sock"),
                   os.path.join(d, "monitor.sock"))  # fmt: skip
        self.store.save(st)
        self._cgroup(st).create()

    def _resolve_namespace_paths(self, spec: dict, st: State) -> dict:
        """/proc/PID/ns/X naming a container of the same VM (by its host pid, the proxy,
        as CRI writes it) becomes ``hyperpy:ID``, which the agent resolves in the guest."""
        nss = (spec.get("linux") or {}).get("namespaces") or []
        if not any(ns.get("path") for ns in nss):
            return spec
        owner = st.sandbox or st.id
        by_pid = {
            pid: o.id
            for pid, o in self._by_pid().items()
            if (o.sandbox or o.id) == owner and o.id != st.id
        }
        spec = json.loads(json.dumps(spec))
        for i, ns in enumerate(spec["linux"]["namespaces"]):
            path = ns.get("path")
            if not path:
                continue
            m = re.fullmatch(r"/proc/(\d+)/ns/\w+", path)
            if not m or int(m.group(1)) not in by_pid:
                raise SpecError(
                    f"namespace path {path!r} is not a namespace of a container in this "
                    f"container's VM (a guest's namespaces are reachable only from the same "
                    "sandbox): use /proc/<pid>/ns/<type> with the pid of such a container",
                    f"/linux/namespaces/{i}/path",
                )
            ns["path"] = "hyperpy:" + by_pid[int(m.group(1))]
        return spec

    def _boot(self, d: str, st: State, spec: dict, netns: str) -> None:
        from hyperpy.config import load as load_config

        config = load_config()
        cfg = config.vm
        req = _vm_request(spec, cfg.memory_mb, cfg.overhead_mb)
        req["network"] = {"netns": netns, "interfaces": config.network.interfaces}
        r, w = os.pipe()
        env = dict(os.environ)
        env["HYPERPY_MONITOR_REQUEST"] = json.dumps(req)
        try:
            mon = _spawn_detached(
                [sys.executable, "-m", "hyperpy.monitor", d, str(w)], (w,), env=env
            )
        finally:
            os.close(w)
        st.monitor_pid, st.driver = mon.pid, cfg.driver
        self.store.save(st)
        # Into the pod's cgroup before the monitor starts QEMU, so that the guest's memory
        # is charged there from its first page (v1 does not move charges with a process).
        cg = self._cgroup(st)
        # The guest enforces the container's limit; the host ceiling is the whole VM plus
        # QEMU's own memory, so the host never OOM-kills the VM for that limit.
        ceiling = (req["memory_mb"] + QEMU_OVERHEAD_MB) << 20 if req["limited"] else None
        cpu = (spec.get("linux", {}).get("resources") or {}).get("cpu") or {}
        cg.create(memory_limit=ceiling, cpu=cpu)  # the cpuset, before QEMU starts in it
        cg.add(st.monitor_pid)
        try:
            line = _read_ready(r, cfg.boot_timeout + 30, "the sandbox monitor")
        finally:
            os.close(r)
        try:
            result = json.loads(line) if line else {"ok": False, "error": "the monitor exited"}
        except ValueError:
            result = {"ok": False, "error": f"garbled monitor report: {line!r}"}
        if not result.get("ok"):
            mon.wait(timeout=30)
            raise_remote(
                {
                    "kind": result.get("kind", "VMError"),
                    "error": result.get("error", "the sandbox monitor failed"),
                }
            )
        st.qemu_pid = result.get("qemu_pid", 0)
        cg.set_cpu(cpu)  # shares, quota, period: after the boot, which they would throttle

    def _spawn_proxy(
        self, d: str, proc: int, console_socket: str | None, stdio: bool, monitor_pid: int
    ) -> int:
        """Start the process proxy; with ``stdio`` it carries the caller's stdin/out/err.

        With a console socket the container's stdio is the pty, and the proxy must hold
        none of the caller's fds: the runc shim reads create's output until EOF.
        """
        r, w = os.pipe()
        argv = [sys.executable, "-m", "hyperpy.proxy", d, str(proc), str(w)]
        if monitor_pid:  # the pod's network namespace: docker's hook finds it through our pid
            argv += ["--netns", f"/proc/{monitor_pid}/ns/net"]
        if console_socket:
            argv += ["--console-socket", os.path.abspath(console_socket)]
        try:
            p = _spawn_detached(argv, (w,), stdio=stdio, session=True)
        finally:
            os.close(w)
        try:
            line = _read_ready(r, 30, "the process proxy")
        finally:
            os.close(r)
        if line != "ok":
            p.kill()
            p.wait(timeout=10)
            raise VMError(f"the process proxy failed: {line or 'it exited'}")
        # The proxy outlives us; the runc shim (a subreaper) or `run` reaps it.
        p.returncode = 0  # keep Popen.__del__ from warning about a running child
        return p.pid

    # --- start, kill, exec, ps, pause -----------------------------------------------------
    def _check(self, cid: str, op: str) -> tuple[State, str]:
        st = self.store.load(cid)
        model.check(op, self.status(st), cid)
        return st, self.store.dir(cid)

    def start(self, cid: str) -> None:
        hot.start(self.store.root, cid)

    def kill(self, cid: str, sig: int, all_: bool = False) -> None:
        hot.kill(self.store.root, cid, sig, all_)

    def exec(
        self,
        cid: str,
        process: dict,
        console_socket: str | None,
        pid_file: str | None,
        detach: bool,
        source: str = "exec",
    ) -> int:
        """Run ``process`` in the container; ``source`` names where it came from in errors
        (``--process FILE``, or exec's arguments)."""
        from hyperpy import preflight

        st, d = self._check(cid, "exec")
        if process.get("terminal") and not console_socket and detach:
            raise UsageError("exec with a terminal and --detach needs --console-socket")
        if pid_file:
            preflight.pid_file(pid_file)
        if console_socket:
            preflight.console_socket(console_socket)
        preflight.process_fits(process, source)
        reply = MonitorClient(d).request("exec", cid=cid, process=process)
        pid = self._spawn_proxy(
            d, reply["proc"], console_socket, not console_socket, st.monitor_pid
        )
        self._cgroup(st).add(pid)
        if pid_file:
            _write_pid_file(pid_file, pid)
        if detach:
            return 0
        return _wait_pid(pid)

    def ps(self, cid: str, guest: bool = True) -> tuple[builtins.list[int], builtins.list[dict]]:
        """(host pids, guest processes): :func:`hyperpy.hot.ps`."""
        return hot.ps(self.store.root, cid, guest)

    def pause(self, cid: str, resume: bool = False) -> None:
        op = "resume" if resume else "pause"
        with self.store.locked(cid):
            st, d = self._check(cid, op)
            # The guest's cgroup freezer, as runc: the VM keeps running, so exec, update,
            # ps and stats still work on a paused container.
            MonitorClient(d).request(P.OP_FREEZE, cid=cid, freeze=not resume)
            st.status = model.AFTER[op].value
            self.store.save(st)

    def update(self, cid: str, resources: dict) -> None:
        with self.store.locked(cid):
            st, d = self._check(cid, "update")
            from hyperpy import preflight

            preflight.update_resources(resources)
            MonitorClient(d).request(P.OP_UPDATE, cid=cid, resources=resources)
            if resources.get("cpu") and st.host_cgroup and not st.sandbox:
                self._cgroup(st).set_cpu(resources["cpu"])  # where the VM's vCPUs run

    def stats(self, cid: str) -> dict:
        return hot.stats(self.store.root, cid)

    # --- delete -------------------------------------------------------------------------
    def delete(self, cid: str, force: bool = False) -> None:
        hot.delete(self.store.root, cid, force)

    def _hooks(self, st: State, kind: str, status: Status) -> None:
        hot.run_hooks(dataclasses.asdict(st), kind, status)

    def _destroy(self, d: str, st: State) -> None:
        hot.destroy(d, dataclasses.asdict(st))

    def _cgroup(self, st: State) -> HostCgroup:
        return hot.cgroup(st.host_cgroup)


# QEMU's own memory beside the guest's RAM (TCG translation cache, device state), measured
# as RSS minus guest RAM under TCG: well under this.
QEMU_OVERHEAD_MB = 256


SANDBOX_ANNOTATION = "io.hyperpy.sandbox"
CRI_TYPE = "io.kubernetes.cri.container-type"
CRI_SANDBOX = "io.kubernetes.cri.sandbox-id"


def _pod_resolvers(spec: dict) -> list[str]:
    """Nameservers on the pod's loopback in the resolv.conf bound into the container (docker's
    embedded DNS, 127.0.0.11): the guest reaches them through the monitor's relay."""
    for m in spec.get("mounts") or []:
        if m.get("destination") == "/etc/resolv.conf" and m.get("source"):
            from hyperpy.dns_relay import loopback_nameservers

            return loopback_nameservers(m["source"])
    return []


def _vm_request(spec: dict, default_mb: int, overhead_mb: int) -> dict:
    """VM size from the spec: its memory limit plus the guest's own overhead; the vCPUs its
    quota and cpuset need (``preflight.vcpus_for``; 0: the configured default)."""
    from hyperpy.preflight import vcpus_for

    res = spec.get("linux", {}).get("resources", {}) or {}
    limit = (res.get("memory") or {}).get("limit") or 0
    memory_mb = max(default_mb, limit // (1 << 20) + overhead_mb) if limit > 0 else default_mb
    vcpus = vcpus_for(res.get("cpu") or {})
    return {"memory_mb": memory_mb, "vcpus": vcpus, "limited": limit > 0}


def _wait_pid(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code
