"""The libvirt driver: a pod's VM as a transient libvirt domain (``[vm] driver = "libvirt"``).

Owns the connection to libvirtd (``[libvirt] uri``; libvirt-python's blocking calls run in
threads, its events in a thread of their own), the domain ``hyperpy-<id>-<root hash>``
(the id is unique only under one ``--root``: containerd keeps a root per namespace), and
what libvirt needs on the host: the pod's view (``vm/view.py``). The domain XML comes from
the same device plan as the direct driver's argv (``vm/domain.py``).

Lifetime: the domain is created with ``AUTODESTROY``: libvirtd destroys it when this
monitor's connection closes, so a monitor that dies leaves nothing running; nothing is ever
defined. A domain that stops (QEMU killed, crashed, the guest powered off) reaches the
monitor as a lifecycle event, which ends the pod as a dead QEMU does (status 255).

NICs: the pod's taps are made in its network namespace on the host, which libvirtd is not
in, so the domain starts paused, each tap goes to QEMU over libvirt's QEMU monitor
passthrough (``getfd`` with the descriptor attached: libvirt marks the domain as tainted
by it), is added as a netdev and a virtio-net device on a root port the XML reserved,
and the domain resumes: the guest boots with its NICs, as under the direct driver.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import grp
import json
import logging
import os
import pwd
import shutil
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from agent.protocol import IMAGE_TAG, SHARE_TAG
from hyperpy import hostcgroup, share
from hyperpy.errors import CgroupError, SpecError, VMError
from hyperpy.vm import domain, view
from hyperpy.vm.boot import watch_boot
from hyperpy.vm.console import DEFAULT_MAX_BYTES, ConsoleListener
from hyperpy.vm.console import tail as console_tail
from hyperpy.vm.devices import Nic, Share9p
from hyperpy.vm.ending import Ending
from hyperpy.vm.share_local import LocalShare

if TYPE_CHECKING:
    from hyperpy.config import LibvirtConfig
    from hyperpy.vm.devices import VMSpec

log = logging.getLogger(__name__)

CALL_TIMEOUT = 30.0  # any one libvirt call (createXML boots nothing yet: ~0.4 s here)
STOPPED_REASONS = {0: "shut down", 1: "destroyed", 2: "crashed", 3: "migrated", 4: "saved",
                   5: "failed (its QEMU died)", 6: "restored from a snapshot"}  # fmt: skip

_events_lock = threading.Lock()
_events_started = False
# libvirt's blocking calls run here, not in asyncio's default executor, which asyncio.run
# joins without a limit at exit: a call stuck on a hung libvirtd must not hold the monitor
# (it ends with os._exit).
_POOL = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="libvirt")


def is_local(uri: str) -> bool:
    return urlsplit(uri).hostname is None


def _start_events() -> None:
    """libvirt's default event loop, in a daemon thread: once per process, before the
    first connection (lifecycle events and keepalives need it)."""
    global _events_started
    import libvirt

    with _events_lock:
        if _events_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _events_started = True


async def _call(what: str, fn: Any, *args: Any, timeout: float = CALL_TIMEOUT) -> Any:
    """``fn(*args)`` in a thread, within ``timeout``; libvirt's error becomes a VMError."""
    import libvirt

    loop = asyncio.get_running_loop()
    try:
        return await asyncio.wait_for(loop.run_in_executor(_POOL, fn, *args), timeout)
    except TimeoutError:
        raise VMError(f"libvirt did not answer {what} within {timeout:.0f}s") from None
    except libvirt.libvirtError as exc:
        raise VMError(f"libvirt: {what} failed: {exc}") from None


async def connect(uri: str) -> Any:
    """A connection to ``uri``, with keepalives; the error names the URI and the fix."""
    import libvirt

    _start_events()
    try:
        conn = await _call(f"connecting to {uri}", libvirt.open, uri, timeout=10.0)
    except VMError as exc:
        raise VMError(
            f"{exc}; is libvirtd running and [libvirt] uri right? "
            '(with [vm] driver = "libvirt" hyperpy needs a libvirtd; '
            "`hyperpy check` tells what it reaches)"
        ) from None
    with contextlib.suppress(libvirt.libvirtError):
        conn.setKeepAlive(5, 3)
    return conn


def qemu_label(caps_xml: str, domain_type: str) -> tuple[int, int]:
    """The uid and gid libvirt's DAC driver runs a domain's QEMU as (its capabilities'
    ``baselabel``); (0, 0) without the DAC driver."""
    import xml.etree.ElementTree as ET

    for model in ET.fromstring(caps_xml).iter("secmodel"):
        if model.findtext("model") != "dac":
            continue
        for base in model.findall("baselabel"):
            if base.get("type") == domain_type and base.text:
                user, _, group = base.text.partition(":")
                return int(user.lstrip("+")), int(group.lstrip("+"))
    return 0, 0


def mac_models(caps_xml: str) -> list[str]:
    """libvirt's mandatory access control drivers (apparmor, selinux) on this host."""
    import xml.etree.ElementTree as ET

    models = (m.findtext("model") for m in ET.fromstring(caps_xml).iter("secmodel"))
    return [m for m in models if m and m not in ("dac", "none")]


class LibvirtVM(LocalShare, Ending):
    """A running pod VM as a libvirt domain; the same surface as ``qemu.QemuVM``."""

    def __init__(self, spec: VMSpec, workdir: str, cfg: LibvirtConfig, kernel: str,
                 initrd: str, console_max: int = DEFAULT_MAX_BYTES) -> None:  # fmt: skip
        self.spec = spec
        self.workdir = workdir
        self.cfg = cfg
        self.kernel, self.initrd = kernel, initrd
        self.name = view.domain_name(workdir)
        self.view = view.View(view.view_name(workdir))
        self.conn: Any = None
        self.dom: Any = None
        self.callback: int | None = None
        self.uid = self.gid = 0
        self.console_path = os.path.join(workdir, "console.log")
        self.console_max = console_max
        self.console: ConsoleListener | None = None

    async def __aenter__(self) -> LibvirtVM:
        await self.launch()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    # --- start ----------------------------------------------------------------------
    async def launch(self) -> None:
        import libvirt

        loop = self._begin()
        self.conn = await connect(self.cfg.uri)
        kvm = self.spec.machine.accel == "kvm"
        caps = await _call("getCapabilities", self.conn.getCapabilities)
        self.uid, self.gid = qemu_label(caps, "kvm" if kvm else "qemu")
        entries = {"shared" if d.tag == SHARE_TAG else "image": d.path
                   for d in self.spec.devices if isinstance(d, Share9p)}  # fmt: skip
        self.view.make(self.kernel, self.initrd, entries, self.gid)
        self.console = ConsoleListener(self.console_path, self.view.path(view.CONSOLE_SOCKET),
                                       self.gid, self.console_max)  # fmt: skip
        nics = [d for d in self.spec.devices if isinstance(d, Nic)]
        paths = domain.Paths(
            kernel=self.view.path("vmlinux"),
            initrd=self.view.path("initrd.img"),
            agent_socket=self.view.path(view.AGENT_SOCKET),
            console_socket=self.view.path(view.CONSOLE_SOCKET),
            exports={SHARE_TAG: self.view.path("shared"), IMAGE_TAG: self.view.path("image")},
        )
        xml = domain.render(
            self.spec, name=self.name, machine=self.cfg.machine, paths=paths,
            state_dir=self.workdir, emulator=shutil.which(self.spec.binary) or self.spec.binary,
            nics=len(nics) if self.cfg.machine == "q35" else 0,
        )  # fmt: skip
        log.info("creating libvirt domain %s on %s:\n%s", self.name, self.cfg.uri, xml)
        flags = libvirt.VIR_DOMAIN_START_AUTODESTROY
        if nics:
            flags |= libvirt.VIR_DOMAIN_START_PAUSED
        try:
            self.dom = await _call(f"creating domain {self.name}", self.conn.createXML, xml, flags)
        except VMError as exc:
            await self.shutdown()
            raise self.failure(str(exc)) from None

        self._account_to_pod()

        def on_lifecycle(_conn: Any, _dom: Any, event: int, detail: int, _opaque: Any) -> None:
            if event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
                how = STOPPED_REASONS.get(detail, f"stopped ({detail})")
                loop.call_soon_threadsafe(self._set_stopped, f"libvirt domain {self.name} {how}")

        def on_close(_conn: Any, reason: int, _opaque: Any) -> None:
            why = f"the connection to libvirt closed (reason {reason})"
            loop.call_soon_threadsafe(self._set_stopped, why)

        try:
            self.callback = await _call(
                "registering for domain events", self.conn.domainEventRegisterAny,
                self.dom, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, on_lifecycle, None,
            )  # fmt: skip
            await _call("registering for the connection's close", self.conn.registerCloseCallback,
                        on_close, None)  # fmt: skip
            if not await _call("isActive", self.dom.isActive):  # stopped before the callback
                self._set_stopped(f"libvirt domain {self.name} stopped during start-up")
            for i, nic in enumerate(nics):
                await self._hand_nic(i, nic)
            if nics:
                await _call("resuming the domain", self.dom.resume)
        except (VMError, ValueError) as exc:
            await self.shutdown()
            raise self.failure(str(exc)) from None

    async def set_memory(self, memory_mb: int) -> None:
        """The balloon's target (``<currentMemory>``), live."""
        import libvirt

        assert self.dom is not None
        await _call("setting the balloon", self.dom.setMemoryFlags, memory_mb << 10,
                    libvirt.VIR_DOMAIN_AFFECT_LIVE)  # fmt: skip

    async def memory_mb(self) -> int:
        assert self.dom is not None
        stats = await _call("reading the balloon", self.dom.memoryStats)
        return int(stats.get("actual", 0)) >> 10

    def _account_to_pod(self) -> None:
        """QEMU into the pod's host cgroup (the monitor's), out of libvirt's machine cgroup,
        with its memory's charges (v1), as the direct driver's QEMU is from its start: the
        pod's memory ceiling, containerd's stats and OOM watching then cover it."""
        pid = self.pid
        pod = hostcgroup.of_process()
        if not pid or pod is None:
            return
        try:
            pod.add(pid, charges=True)
        except (CgroupError, OSError) as exc:
            log.warning("QEMU (pid %d) stays in libvirt's cgroup, not the pod's %s: %s",
                        pid, pod.rel, exc)  # fmt: skip

    async def _hand_nic(self, i: int, nic: Nic) -> None:
        import libvirt_qemu

        bus = domain.nic_port(i) if self.cfg.machine == "q35" else "pci.0"
        cmds = [
            ("getfd", {"fdname": f"hptap{i}"}, [nic.fd]),
            (
                "netdev_add",
                {"type": "tap", "id": f"hpnet{i}", "fd": f"hptap{i}", "vhost": False},
                [],
            ),  # fmt: skip
            (
                "device_add",
                {
                    "driver": "virtio-net-pci",
                    "id": f"hpnic{i}",
                    "netdev": f"hpnet{i}",
                    "mac": nic.mac,
                    "bus": bus,
                },
                [],
            ),  # fmt: skip
        ]
        for cmd, args, files in cmds:
            text = json.dumps({"execute": cmd, "arguments": args})
            out, _ = await _call(f"QMP {cmd} for NIC {i}", libvirt_qemu.qemuMonitorCommandWithFiles,
                                 self.dom, text, files)  # fmt: skip
            if "error" in json.loads(out):
                raise VMError(f"QMP {cmd} for NIC {i} failed: {out}")

    # --- the surface the monitor uses -------------------------------------------------
    async def open_agent(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_unix_connection(self.view.path(view.AGENT_SOCKET))

    async def watch_boot(self, ready: asyncio.Future, timeout: float) -> None:
        await watch_boot(self, ready, timeout)

    @property
    def running(self) -> bool:
        return self.dom is not None and self.exited() is None

    @property
    def pid(self) -> int:
        """QEMU's host pid (libvirt's pid file), or 0 when the domain is not on this host."""
        if not is_local(self.cfg.uri):
            return 0
        try:
            with open(f"/run/libvirt/qemu/{self.name}.pid") as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def failure(self, what: str, cls: type[VMError] = VMError) -> VMError:
        if self.console is not None:
            self.console.drain()  # its last lines, before they are quoted
        qemu_log = f"/var/log/libvirt/qemu/{self.name}.log"
        tail = "(not on this host)"
        if is_local(self.cfg.uri):
            tail = console_tail(qemu_log, 10)
        return cls(
            f"{what}.\nlibvirt domain {self.name} on {self.cfg.uri}; "
            f"libvirt's QEMU log ({qemu_log}), last lines:\n{tail}\n"
            f"console log ({self.console_path}), last lines:\n{console_tail(self.console_path)}"
        )

    async def shutdown(self, grace: float = 10.0) -> None:
        """Destroy the domain (libvirt: SIGTERM, then SIGKILL), close the connection,
        remove the view: each step even if one fails. On a connection that died (libvirtd
        restarted: AUTODESTROY did not fire), destroy it through a new one."""
        try:
            dom, self.dom = self.dom, None
            conn, self.conn = self.conn, None
            if dom is not None:
                try:
                    if await _call("isActive", dom.isActive, timeout=grace):
                        await _call(f"destroying {self.name}", dom.destroy, timeout=grace)
                except VMError as exc:
                    log.warning("%s; destroying %s through a new connection", exc, self.name)
                    await asyncio.get_running_loop().run_in_executor(
                        _POOL, destroy_by_name, self.cfg.uri, self.name, grace
                    )
            if conn is not None:
                with contextlib.suppress(VMError):
                    if self.callback is not None:
                        await _call("deregistering", conn.domainEventDeregisterAny,
                                    self.callback, timeout=grace)  # fmt: skip
                    await _call("deregistering", conn.unregisterCloseCallback, timeout=grace)
                with contextlib.suppress(VMError):
                    await _call("closing the connection", conn.close, timeout=grace)
            self._set_stopped(f"libvirt domain {self.name} destroyed")
        finally:
            if self.console is not None:
                self.console.close()
                self.console = None
            self.view.remove()

    def close(self) -> None:
        """Nothing of the monitor's to close: the channel is a socket by path."""

    def check_binds(self, binds: list[share.Bind]) -> list[share.Bind]:
        """What QEMU, as libvirt's unprivileged user, can serve of ``binds`` (see
        :func:`check_access`)."""
        return check_access(binds, self.uid, self.gid)


def check_access(binds: list[share.Bind], uid: int, gid: int) -> list[share.Bind]:
    """``binds`` as QEMU running as ``uid``/``gid`` can serve them. A read-write file it may
    read but not write (docker's resolv.conf, hosts, hostname) is served read-only, with a
    warning: the container cannot edit it, and still sees the host's changes. Any other
    source it may not read, or write when read-write, is refused (``SpecError`` naming the
    mount, before the container is made). A source with an ACL is taken as granted."""
    if uid == 0:
        return binds
    groups = {gid, *(g.gr_gid for g in grp.getgrall() if _user(uid) in g.gr_mem)}
    out = []
    for b in binds:
        try:
            st = os.stat(b.source)
        except OSError:
            out.append(b)  # share.apply says why
            continue
        x = 1 if b.is_dir else 0
        if _has_acl(b.source) or _may(st, uid, groups, 4 | x | (0 if b.readonly else 2)):
            out.append(b)
            continue
        if not b.readonly and not b.is_dir and _may(st, uid, groups, 4):
            log.warning("%s: served read-only: libvirt's QEMU user (uid %d) may not write it",
                        b.source, uid)  # fmt: skip
            out.append(dataclasses.replace(b, readonly=True))
            continue
        where = b.target.split("/")
        pointer = f"/mounts/{where[2]}/source" if where[1:2] == ["mounts"] else "/root/path"
        what = "read" if b.readonly else "read and write"
        raise SpecError(
            f"{b.source} is not something libvirt's QEMU user (uid {uid}, gid {gid}) may "
            f'{what}: with [vm] driver = "libvirt" QEMU runs unprivileged and the 9p share '
            f"acts as it. Give that user access (e.g. setfacl -m u:{uid}:rwX), mount it "
            'read-only if it only needs reading, or use [vm] driver = "qemu"',
            pointer=pointer,
        )
    return out


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


def _may(st: os.stat_result, uid: int, groups: set[int], need: int) -> bool:
    if st.st_uid == uid:
        bits = (st.st_mode >> 6) & 7
    elif st.st_gid in groups:
        bits = (st.st_mode >> 3) & 7
    else:
        bits = st.st_mode & 7
    return bits & need == need


def _has_acl(path: str) -> bool:
    try:
        return bool(os.getxattr(path, "system.posix_acl_access"))
    except OSError:
        return False


def open_within(uri: str, timeout: float) -> Any:
    """A connection to ``uri`` from a synchronous caller (delete, check), or VMError after
    ``timeout`` (the attempt goes on in a daemon thread)."""
    import libvirt

    out: list[Any] = []

    def attempt() -> None:
        try:
            out.append(libvirt.open(uri))
        except libvirt.libvirtError as exc:
            out.append(exc)

    t = threading.Thread(target=attempt, name="libvirt-open", daemon=True)
    t.start()
    t.join(timeout)
    if not out:
        raise VMError(f"libvirt at {uri} did not answer within {timeout:.0f}s")
    if isinstance(out[0], Exception):
        raise VMError(f"cannot connect to libvirt at {uri}: {out[0]}")
    return out[0]


def destroy_by_name(uri: str, name: str, timeout: float = 10.0) -> None:
    """Destroy domain ``name`` if it still runs (a pod whose monitor or connection died),
    trying to connect for ``timeout`` (libvirtd may be restarting); a warning, not an
    error, when libvirt cannot be reached."""
    import libvirt

    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = open_within(uri, max(0.1, deadline - time.monotonic()))
            break
        except VMError as exc:
            if time.monotonic() >= deadline:
                log.warning("cannot make sure domain %s is gone: %s", name, exc)
                return
            time.sleep(0.5)
    try:
        dom = conn.lookupByName(name)
        if dom.isActive():
            dom.destroy()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            log.warning("cannot destroy domain %s: %s", name, exc)
    finally:
        conn.close()
