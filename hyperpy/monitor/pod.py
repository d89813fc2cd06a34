"""The sandbox monitor's pod: the VM, the agent channel, and what the CLI asks of them.

Owns the VM through its hypervisor driver (``vm/hypervisor.py``), the single agent channel
(multiplexed here; its requests and frames are ``agent_link.py``'s), the sandbox's 9p
export (``share.py``), the pod's network (taps, wiring, the DNS relay), the pod's
processes (``procs.py``) and the record of exit statuses (exit.json). ``server.py`` serves
monitor.sock and hands each request to :meth:`Monitor.handle`.

If QEMU or the agent dies, every process without an exit gets a synthetic ``exit`` with
status 255 and a reason, the proxies are told, and the monitor cleans up and exits.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from agent import protocol as P
from hyperpy import network, share
from hyperpy.agent_link import AgentLink
from hyperpy.config import Config
from hyperpy.errors import AgentError, HyperpyError, VMError
from hyperpy.log import GuestWarnings
from hyperpy.monitor.procs import Processes
from hyperpy.monitor.resize import Sizer
from hyperpy.monitor.server import Server
from hyperpy.sandbox.store import write_json_atomic
from hyperpy.vm import hypervisor, sizing, snapshot, template
from hyperpy.vm.devices import Incoming, Memory

log = logging.getLogger("hyperpy.monitor")

RESTORE_TIMEOUT = 15.0  # a VM restored from a template says hello in ~0.1 s under TCG
DNS_BUFFER_LIMIT = 1 << 20  # relayed DNS answers are dropped while the channel holds more


class Monitor:
    def __init__(self, state_dir: str, config: Config, sock: Any = None) -> None:
        self.dir = state_dir
        self.sock = sock  # the remote driver's connection to its host (made in main())
        self.nics = True
        self.faithful = False  # [vm] files, as the driver serves it (boot)
        self.config = config
        self.cfg = config.vm
        self.jail_cfg = config.jail
        self.template_cfg = config.template
        self.template: str | None = None  # the key of the template this VM came from
        self.vm: hypervisor.VM | None = None
        self.agent: AgentLink | None = None
        self.procs = Processes(self._flow)
        self.stop = asyncio.Event()
        self.server: asyncio.AbstractServer | None = None
        self.tasks: set[asyncio.Task] = set()  # kept, so they are not collected mid-run
        self.warnings = GuestWarnings(log)
        self.timings: dict[str, float] = {}  # host CLOCK_MONOTONIC seconds
        self.guest: dict[str, float] = {}  # guest CLOCK_BOOTTIME ms: the boot's phases
        self.taps: list[network.Tap] = []  # made in the pod's namespace (network.py)
        self.wired: list[str] | None = None  # the interfaces redirected to them, once wired
        self.dns: Any = None  # dns_relay.Relay, when the pod's resolver is on its loopback
        self.sizer: Sizer | None = None  # the VM's size while it runs (resize.py)

    # --- boot ---------------------------------------------------------------------------
    async def boot(self, request: dict) -> dict:
        cfg = self.cfg
        driver = hypervisor.Driver(self.config, self.dir, self.sock)  # the artifacts exist
        self.sock = None
        exports = share.prepare(self.dir)
        driver.prepare(exports)  # the host's probes: the accelerator, vsock
        self.nics = driver.caps.nics
        if request.get("network") is not None and self.nics:
            self.taps = network.make_taps(int(request["network"].get("interfaces", 1)))
        shape: dict[str, Any] = dict(share=exports[share.SHARED], image=exports[share.IMAGE],
                     memory_mb=request.get("memory_mb") or None,
                     vcpus=request.get("vcpus") or None,
                     nics=tuple((t.fd, t.mac) for t in self.taps),
                     faithful=driver.faithful)  # fmt: skip
        self.faithful = driver.faithful

        async def launch(memory: Memory | None = None, incoming: Incoming | None = None):
            self.vm = driver.make(shape, memory, incoming)
            await self.vm.launch()
            if incoming is None and memory is None and self.vm.spec.resources.balloon:
                # a cold boot: the guest's driver inflates it as it comes up
                await self.vm.set_memory(self.vm.spec.resources.memory_mb)
            return self.vm

        self.timings["launch"] = time.monotonic()
        hello = None
        try:
            if self.template_cfg.enabled and driver.templates:
                hello = await self._from_template(driver, shape, launch)
            if hello is None:
                await launch()
                hello = await self._agent_ready(cfg.boot_timeout)
        finally:
            network.close_taps(self.taps)  # QEMU holds them now: they go with it
        assert self.vm is not None and self.agent is not None
        ceiling, restored = request.get("ceiling_cgroup"), self.template is not None
        self.sizer = Sizer(self.config, self.vm, self.agent.request, self.dir, ceiling,
                           returns_memory=not restored)  # fmt: skip
        await self.sizer.start()
        self.timings["agent_ready"] = time.monotonic()
        return {
            "accel": self.vm.spec.machine.accel,  # the remote driver's is the remote host's
            "hello": hello,
            "qemu_pid": self.vm.pid,
            **driver.report(),
            "template": self.template,
        }

    async def _from_template(
        self, driver: hypervisor.Driver, shape: dict, launch: snapshot.Launcher
    ) -> dict | None:
        """The agent's hello from a VM restored from this shape's template (built first if
        this is the shape's first pod), or None: boot cold (the reason is logged)."""
        cfg = self.cfg
        res = sizing.resources(cfg, shape["memory_mb"], shape["vcpus"])
        memory_mb = res.ram_mb
        try:
            k = driver.template_key(shape)
        except OSError as exc:
            log.warning("no template (%s): booting cold", exc)
            return None
        store = template.Store(self.template_cfg.dir)
        held = await store.obtain(k, launch, memory_mb, cfg.boot_timeout,
                                  cfg.memory_mb if res.balloon else 0)  # fmt: skip
        if held is None:
            return None
        try:
            await snapshot.restore(held.mem, held.state, launch, memory_mb)
            hello = await self._agent_ready(RESTORE_TIMEOUT)
        except HyperpyError as exc:
            log.warning("template %s failed to restore, removed; booting cold: %s", k, exc)
            await self._stop_vm()
            self.vm = None
            store.remove(k, keeper_pid=held.meta.get("pid"))
            return None
        finally:
            held.close()
        log.info("the VM was restored from template %s", k)
        self.template = k
        return hello

    async def _agent_ready(self, timeout: float) -> dict:
        """Connect the agent channel and say hello, failing fast if the guest dies."""
        assert self.vm is not None
        ready = asyncio.get_running_loop().create_future()
        connect = asyncio.ensure_future(self._connect_agent(self.vm, ready))
        try:
            await self.vm.watch_boot(ready, timeout)
        finally:
            if not connect.done():
                connect.cancel()
        return ready.result()

    async def _connect_agent(self, vm: hypervisor.VM, ready: asyncio.Future) -> None:
        try:
            while True:
                try:
                    reader, writer = await vm.open_agent()
                    break
                except OSError:
                    await asyncio.sleep(0.02)
            self.agent = AgentLink(reader, writer)
            self.agent.on_event = self._on_agent_event
            self.agent.on_data = self._on_agent_data
            self.agent.on_new_proc = self.procs.add
            self.agent.warn = self.warnings  # one count of what this guest sent
            asyncio.ensure_future(self.agent.pump())
            hello = await self.agent.request(
                P.OP_HELLO,
                timeout=3600,
                version=P.PROTOCOL_VERSION,
                time_ns=time.time_ns(),
                seed=base64.b64encode(os.urandom(64)).decode(),
            )
            self.guest["init_ms"] = hello.get("init_ms", 0.0)
            self.guest["hello_ms"] = hello.get("now_ms", 0.0)
            if not ready.done():
                ready.set_result(hello)
        except Exception as exc:  # noqa: BLE001 - handed to the boot waiter
            if not ready.done():
                ready.set_exception(exc)

    # --- agent events -------------------------------------------------------------------
    async def _flow(self, proc: int, pause: bool) -> None:
        if self.agent is not None:
            await self.agent.request(P.OP_FLOW, proc=proc, pause=pause, timeout=10)

    def _on_agent_data(self, stream: int, payload: bytes) -> None:
        proc, _ = P.split_stream(stream)
        entry = self.procs.get(proc)
        if entry is None:
            self._warn("the agent sent output of unknown process %d: dropped", proc)
            return
        entry.attachment.deliver(P.encode(P.DATA, stream, payload))

    def _on_agent_event(self, msg: dict) -> None:
        if msg.get("event") == P.EV_READY:
            self.guest["ready_ms"] = msg.get("ready_ms", 0.0)
        if msg.get("event") == P.EV_EXIT:
            self._record_exit(msg)
        if msg.get("event") == P.EV_DNS and self.dns is not None:
            coro = self.dns.query(msg)
            if coro is not None:
                self.spawn(coro)

    def _record_exit(self, msg: dict) -> None:
        proc = msg.get("proc")
        entry = self.procs.get(proc)
        if entry is None:
            self._warn("the agent reported the exit of unknown process %r: ignored", proc)
            return
        att = entry.attachment
        if att.exit is not None:
            return
        status = msg.get("status")
        msg["status"] = status if isinstance(status, int) and 0 <= status <= 255 else 255
        att.exit = msg
        if entry.exit_dir is not None:  # a container's init, as the host recorded it
            if msg.get("t_ms"):
                self.guest["exit_ms"] = msg["t_ms"]
            write_json_atomic(
                os.path.join(entry.exit_dir, "exit.json"),
                {
                    "status": msg.get("status"),
                    "signal": msg.get("signal"),
                    "reason": msg.get("reason", ""),
                    "time": time.time(),
                    "guest": self.guest,  # the boot's phases, for make bench
                },
            )
        if att.writer is not None and not att.writer.is_closing():
            att.finish(att.writer)
        if self.procs.all_exited():
            # Every process of every container in this VM has exited, and a stopped container
            # can only be deleted: the VM goes now (its memory is the host's again at once,
            # and delete has no VM to wait for). The proxies get their exits first.
            log.info("every container process has exited: stopping the VM")
            asyncio.get_running_loop().call_soon(self.stop.set)

    def _warn(self, fmt: str, *args: object) -> None:
        """A warning about what the guest sent (rate-limited: hyperpy.log.GuestWarnings)."""
        self.warnings(fmt, *args)

    def _end(self, procs: list[int], status: int, sig: int | None, reason: str) -> None:
        """Record an exit, made up here, for each of ``procs`` that has none yet."""
        for proc in procs:
            if (entry := self.procs.get(proc)) is None or not entry.exited:
                self._record_exit({"event": P.EV_EXIT, "proc": proc, "status": status,
                                   "signal": sig, "reason": reason})  # fmt: skip

    def _vm_gone(self, reason: str) -> None:
        self._end(list(self.procs), 255, None, reason)
        self.stop.set()

    # --- what the server asks (server.Session) ------------------------------------------
    async def stdin(self, stream: int, payload: bytes) -> None:
        """A proxy's stdin DATA frame, to the agent (waiting while the guest is behind)."""
        assert self.agent is not None
        await self.agent.forward(P.encode(P.DATA, stream, payload))

    def orphaned(self, proc: int) -> None:
        """The proxy of ``proc`` went away before its exit: the pid the caller holds (in
        --pid-file) stands for the process, so the process dies too, as under runc."""
        log.warning("the proxy of process %d went away: killing the process", proc)

        async def kill() -> None:
            if self.agent is not None:
                with contextlib.suppress(HyperpyError):
                    await self.agent.request(P.OP_SIGNAL, proc=proc, signal=signal.SIGKILL,
                                             timeout=10)  # fmt: skip

        self.spawn(kill())

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # --- requests ---------------------------------------------------------------------
    async def handle(self, msg: dict) -> dict:
        op = msg.get("op")
        agent = self.agent
        if agent is None:
            raise VMError("the VM is not running")
        if op == "create":
            return await self._create(msg)
        if op == "remove":
            return await self._remove(msg)
        if op == "wire":
            return await self._wire(msg["cid"], [str(s) for s in msg.get("dns") or []])
        if op == "start":
            reply = await agent.request(P.OP_START, cid=msg["cid"])
            self.guest["started_ms"] = reply.get("started_ms", 0.0)
            return reply
        if op == "exec":
            return await agent.request(P.OP_EXEC, cid=msg["cid"], process=msg["process"])
        if op == P.OP_UPDATE and self.sizer is not None:
            await self.sizer.update(msg["cid"], msg.get("resources") or {})
            return {"vm": self.sizer.report()}
        if op == P.OP_STATS and self.sizer is not None:
            reply = await agent.request(op, cid=msg["cid"])
            reply.get("stats", {})["vm"] = self.sizer.report()
            return reply
        if op in (P.OP_SIGNAL, P.OP_WINSIZE, P.OP_PS, P.OP_UPDATE, P.OP_STATS, P.OP_FREEZE):
            known = {k.rstrip("?") for k in P.FIELDS[op]}  # only what the op defines
            return await agent.request(op, **{k: v for k, v in msg.items() if k in known})
        if op == "info":
            return {
                "pid": os.getpid(),
                "qemu_pid": self.vm.pid if self.vm else 0,
                "timings": self.timings,
                "guest": self.guest,
                "resize": self.sizer.last if self.sizer else {},
            }
        if op == "shutdown":
            asyncio.get_running_loop().call_soon(self.stop.set)
            return {}
        raise AgentError(f"unknown monitor operation {op!r}")

    async def _create(self, msg: dict) -> dict:
        assert self.agent is not None
        if not isinstance(msg.get("bundle"), str):
            raise P.ProtocolError("create: field 'bundle' is missing")
        cid = msg["cid"]
        plan = share.plan(msg["spec"], msg["bundle"], cid, self.faithful)
        assert self.vm is not None
        plan.binds = self.vm.check_binds(plan.binds)
        if self.sizer is not None:
            resources = (msg["spec"].get("linux") or {}).get("resources") or {}
            await self.sizer.join(cid, resources)
        await self.vm.share(plan, self.dir)
        try:
            reply = await self.agent.request(
                P.OP_CREATE,
                cid=cid,
                spec=plan.guest_spec,
                rootfs=plan.guest_rootfs,
                root_layer="host" if self.faithful else "guest",
                no_pivot=bool(msg.get("no_pivot")),
            )
        except BaseException:
            await self.vm.unshare(cid, self.dir)
            raise
        # self.procs has it already (AgentLink.on_new_proc)
        self.procs.set_init(reply["proc"], msg.get("state_dir") or self.dir)
        return {"proc": reply["proc"], "pid": reply["pid"]}

    async def _wire(self, cid: str, dns: list[str]) -> dict:
        """The create hooks have run: join the pod namespace's interfaces to the VM's taps
        and configure the guest's NICs in ``cid``'s network namespace (the pod's); relay
        queries to ``dns`` (resolvers on the pod's loopback) from there."""
        agent = self.agent
        assert agent is not None
        if not self.nics and network.interfaces():
            raise network.NetworkError(
                f"the pod's network namespace has {', '.join(network.interfaces())}, but with "
                f"[vm] driver = \"{self.config.vm.driver}\" the VM runs on another host, which "
                "the pod's network does not reach: run it without a network (docker "
                "--network none), or use the qemu or libvirt driver"
            )
        if self.wired is not None or not self.taps:
            return {"interfaces": []}
        t0 = time.monotonic()
        self.wired, guest = network.wire(self.taps)
        t1 = time.monotonic()
        if guest["interfaces"]:
            if dns:
                from hyperpy.dns_relay import Relay

                async def answer(q: int, data: str) -> None:
                    # a guest that stops reading its channel gets no more answers queued
                    if agent.writer.transport.get_write_buffer_size() < DNS_BUFFER_LIMIT:
                        await agent.request(P.OP_DNS_REPLY, 5, q=q, data=data)

                self.dns = Relay(dns, answer)
                guest["dns"] = dns
            try:
                await agent.request(P.OP_NETWORK, cid=cid, **guest)
                log.info(
                    "wired %s: host side %.1f ms, guest (network op) %.1f ms",
                    self.wired,
                    (t1 - t0) * 1e3,
                    (time.monotonic() - t1) * 1e3,
                )
            except BaseException:
                network.unwire(self.wired)
                self.wired = []
                raise
        return {"interfaces": self.wired}

    async def _remove(self, msg: dict) -> dict:
        """A container of this VM is deleted; the VM stays for the others."""
        assert self.agent is not None
        cid = msg["cid"]
        await self.agent.request(P.OP_DESTROY, cid=cid)
        procs = self.procs.of(cid)
        # The agent reaps after it answers: say now how they ended, or their proxies would
        # wait for exits that come after the host forgot the processes.
        self._end(procs, 128 + signal.SIGKILL, signal.SIGKILL, "the container was deleted")
        assert self.vm is not None
        await self.vm.unshare(cid, self.dir)
        self.procs.forget(procs)
        if self.sizer is not None:
            self.sizer.leave(cid)
        return {}

    # --- main ---------------------------------------------------------------------------
    async def main(self, ready: Callable[[dict], None]) -> int:
        """Boot, say so with ``ready`` (or why not), serve until the pod ends, clean up."""
        os.chdir(self.dir)
        request = json.loads(os.environ.get("HYPERPY_MONITOR_REQUEST", "{}"))
        try:
            info = await self.boot(request)
            self.server = await asyncio.start_unix_server(Server(self).serve_client,
                                                          path="monitor.sock")  # fmt: skip
        except BaseException as exc:
            ready({"ok": False, "error": str(exc), "kind": type(exc).__name__})
            await self.cleanup()
            return 1
        ready({"ok": True, "pid": os.getpid(), **info})
        assert self.vm is not None and self.agent is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self.stop.set)
        vm_wait = asyncio.ensure_future(self.vm.ended())
        stop_wait = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait(
            {vm_wait, stop_wait, asyncio.ensure_future(asyncio.shield(self.agent.closed))},
            return_when=asyncio.FIRST_COMPLETED,
        )
        if self.agent.closed.done() and not vm_wait.done() and not stop_wait.done():
            # the channel usually closes because QEMU is going away: name that if so
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(vm_wait), 1.0)
        if vm_wait.done():
            self._vm_gone(f"the VM exited ({vm_wait.result()})")
        elif self.agent.closed.done() and not stop_wait.done():
            self._vm_gone(f"{self.agent.closed.result()} (the VM is still running)")
        else:
            # No guest shutdown first: nothing in the guest needs one (its roots are in its
            # memory, volumes are 9p with cache=none), and QMP quit in cleanup is at once.
            self._vm_gone("the sandbox was shut down")
        await self.cleanup()
        return 0

    async def _stop_vm(self) -> None:
        """Stop the VM in stages, then release the monitor's ends of it: the agent's
        transport first (its socket is closed next), even if the stop failed."""
        vm = self.vm
        if vm is None:
            return
        try:
            await vm.shutdown()
        finally:
            if self.agent is not None:
                self.agent.writer.close()
                self.agent = None
            vm.close()

    async def cleanup(self) -> None:
        """Flush the proxies, stop QEMU, release the share: each step even if one fails."""
        try:
            if self.server is not None:
                self.server.close()
            for att in self.procs.attachments():
                writer = att.writer  # the client's handler may drop it while we wait
                if writer is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(writer.drain(), 2)
                    writer.close()
        finally:
            try:
                await self._stop_vm()
            finally:
                with contextlib.suppress(Exception):
                    network.unwire(self.wired or [])
                share.release(self.dir)
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.dir, "monitor.sock"))
