"""The sandbox monitor: one long-lived process per VM.

Owns the VM through its hypervisor driver (``vm/hypervisor.py``: QEMU here and jailed by
``vm/jail.py``, a libvirt domain, or a QEMU on a remote host), the single agent channel
(multiplexed here; its requests and frames are ``agent_link.py``'s), the sandbox's 9p
export (``share.py``), and the record of exit statuses (exit.json). Serves the
CLI and the process proxies on ``monitor.sock`` with the agent's own framing
(:mod:`agent.protocol`):

- CLI requests (``create``, ``start``, ``exec``, ``signal``, ``ps``, ``pause``, ``resume``,
  ``shutdown``) are answered on the connection that sent them;
- a proxy sends ``attach {"proc": N}``: from then on the monitor sends it that process's
  stdout/stderr DATA frames and its ``exit`` event, and forwards its stdin DATA frames and
  ``signal``/``winsize`` requests to the agent. Output produced before a proxy attaches is
  kept until it does.

If QEMU or the agent dies, every process without an exit gets a synthetic ``exit`` with
status 255 and a reason, the proxies are told, and the monitor cleans up and exits.

Started by ``hyperpy create`` as ``python -m hyperpy.monitor STATE_DIR READY_FD``: it
detaches from the caller's stdio (the runc shim waits on those pipes), reports readiness or
the boot error as one JSON line on READY_FD, then closes it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from typing import Any

from agent import protocol as P
from hyperpy import network, share
from hyperpy.agent_link import AgentLink, Attachment
from hyperpy.config import Config
from hyperpy.config import load as load_config
from hyperpy.errors import AgentError, HyperpyError, SpecError, VMError
from hyperpy.log import GuestWarnings, to_file
from hyperpy.sandbox.store import write_json_atomic
from hyperpy.vm import hypervisor, qemu, template
from hyperpy.vm.devices import Incoming, Memory

log = logging.getLogger("hyperpy.monitor")

RESTORE_TIMEOUT = 15.0  # a VM restored from a template says hello in ~0.1 s under TCG
# monitor.sock's peers and the agent are hostile input: bounded connections, bounded bytes.
MAX_CLIENTS = 256
PARTIAL_FRAME_TIMEOUT = 10.0  # a client that leaves a frame incomplete this long is dropped
DECODE_BUDGET = 32 << 20  # incomplete frames held over all clients; the largest goes first
DNS_BUFFER_LIMIT = 1 << 20  # relayed DNS answers are dropped while the channel holds more


class Monitor:
    def __init__(self, state_dir: str, config: Config, sock: Any = None) -> None:
        self.dir = state_dir
        self.sock = sock  # the remote driver's connection to its host (made in main())
        self.nics = True
        self.config = config
        self.cfg = config.vm
        self.jail_cfg = config.jail
        self.template_cfg = config.template
        self.template: str | None = None  # the key of the template this VM came from
        self.vm: hypervisor.VM | None = None
        self.agent: AgentLink | None = None
        self.attachments: dict[int, Attachment] = {}
        self.procs: dict[int, str] = {}  # proc -> cid
        self.inits: dict[str, int] = {}  # cid -> init proc
        self.state_dirs: dict[str, str] = {}  # cid -> its state dir (exit.json goes there)
        self.stop = asyncio.Event()
        self.server: asyncio.AbstractServer | None = None
        self.clients: dict[asyncio.StreamWriter, P.Decoder] = {}
        self.tasks: set[asyncio.Task] = set()  # kept, so they are not collected mid-run
        self.warnings = GuestWarnings(log)
        self.timings: dict[str, float] = {}  # host CLOCK_MONOTONIC seconds
        self.guest: dict[str, float] = {}  # guest CLOCK_BOOTTIME ms: the boot's phases
        self.taps: list[network.Tap] = []  # made in the pod's namespace (network.py)
        self.wired: list[str] | None = None  # the interfaces redirected to them, once wired
        self.dns: Any = None  # dns_relay.Relay, when the pod's resolver is on its loopback

    # --- boot ---------------------------------------------------------------------------
    async def boot(self, request: dict) -> dict:
        cfg = self.cfg
        qemu.check_artifacts(cfg)
        exports = share.prepare(self.dir)
        accel = qemu.choose_accel(cfg)
        vsock_cid = None
        if cfg.channel == "vsock" or (cfg.channel == "auto" and qemu.vsock_usable()):
            vsock_cid = 3 + (os.getpid() % 0x7FFFFFF0)
        driver = hypervisor.Driver(self.config, self.dir, accel, vsock_cid, exports, self.sock)
        self.sock = None
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
            return self.vm

        self.timings["launch"] = time.monotonic()
        hello = None
        try:
            templates = driver.caps.templates and driver.vsock_cid is None
            if self.template_cfg.enabled and templates:
                hello = await self._from_template(driver, shape, launch)
            if hello is None:
                await launch()
                hello = await self._agent_ready(cfg.boot_timeout)
        finally:
            network.close_taps(self.taps)  # QEMU holds them now: they go with it
        self.timings["agent_ready"] = time.monotonic()
        assert self.vm is not None
        return {
            "accel": self.vm.spec.machine.accel,  # the remote driver's is the remote host's
            "hello": hello,
            "qemu_pid": self.vm.pid,
            **driver.report(),
            "template": self.template,
        }

    async def _from_template(
        self, driver: hypervisor.Driver, shape: dict, launch: template.Launcher
    ) -> dict | None:
        """The agent's hello from a VM restored from this shape's template (built first if
        this is the shape's first pod), or None: boot cold (the reason is logged)."""
        cfg = self.cfg
        memory_mb = shape["memory_mb"] or cfg.memory_mb
        keyspec = qemu.build_spec(cfg, driver.accel, qemu.Placeholder(), jailed=True, **shape)
        try:
            binary = shutil.which(keyspec.binary) or keyspec.binary
            k = template.key(keyspec.argv(), (binary, cfg.kernel, cfg.initrd))
        except OSError as exc:
            log.warning("no template (%s): booting cold", exc)
            return None
        store = template.Store(self.template_cfg.dir)
        held = await store.obtain(k, launch, memory_mb, cfg.boot_timeout)
        if held is None:
            return None
        try:
            await template.restore(held, launch, memory_mb)
            hello = await self._agent_ready(RESTORE_TIMEOUT)
        except HyperpyError as exc:
            log.warning("template %s failed to restore, removed; booting cold: %s", k, exc)
            if self.vm is not None:
                await self.vm.shutdown()
            if self.agent is not None:  # the transport first: its socket is closed next
                self.agent.writer.close()
                self.agent = None
            if self.vm is not None:
                self.vm.close()
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
            self.agent.on_new_proc = self.procs.__setitem__
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
    def _attachment(self, proc: int) -> Attachment:
        if proc not in self.attachments:
            self.attachments[proc] = Attachment(lambda pause: self._flow(proc, pause))
        return self.attachments[proc]

    async def _flow(self, proc: int, pause: bool) -> None:
        if self.agent is not None:
            await self.agent.request(P.OP_FLOW, proc=proc, pause=pause, timeout=10)

    def _on_agent_data(self, stream: int, payload: bytes) -> None:
        proc, _ = P.split_stream(stream)
        if proc not in self.procs:
            self._warn("the agent sent output of unknown process %d: dropped", proc)
            return
        self._attachment(proc).deliver(P.encode(P.DATA, stream, payload))

    def _on_agent_event(self, msg: dict) -> None:
        if msg.get("event") == P.EV_READY:
            self.guest["ready_ms"] = msg.get("ready_ms", 0.0)
        if msg.get("event") == P.EV_EXIT:
            self._record_exit(msg)
        if msg.get("event") == P.EV_DNS and self.dns is not None:
            coro = self.dns.query(msg)
            if coro is not None:
                self._spawn(coro)

    def _record_exit(self, msg: dict) -> None:
        proc = msg.get("proc")
        if not isinstance(proc, int) or proc not in self.procs:
            self._warn("the agent reported the exit of unknown process %r: ignored", proc)
            return
        att = self._attachment(proc)
        if att.exit is not None:
            return
        status = msg.get("status")
        msg["status"] = status if isinstance(status, int) and 0 <= status <= 255 else 255
        att.exit = msg
        cid = self.procs[proc]  # what the host recorded, not what the guest says
        if self.inits.get(cid) == proc:
            if msg.get("t_ms"):
                self.guest["exit_ms"] = msg["t_ms"]
            write_json_atomic(
                os.path.join(self.state_dirs.get(cid, self.dir), "exit.json"),
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
        if self.inits and all(
            p in self.attachments and self.attachments[p].exit is not None for p in self.procs
        ):
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
            if (att := self.attachments.get(proc)) is None or att.exit is None:
                self._record_exit({"event": P.EV_EXIT, "proc": proc, "status": status,
                                   "signal": sig, "reason": reason})  # fmt: skip

    def _vm_gone(self, reason: str) -> None:
        self._end(list(self.procs), 255, None, reason)
        self.stop.set()

    # --- clients ------------------------------------------------------------------------
    async def serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if len(self.clients) >= MAX_CLIENTS:
            self._refuse(writer, 0, f"too many connections to the monitor (limit {MAX_CLIENTS})")
            writer.close()
            return
        decoder = P.Decoder()
        self.clients[writer] = decoder
        attached: int | None = None
        partial_since = 0.0  # when the incomplete frame in the decoder began
        try:
            while True:
                timeout = None
                if decoder.buffered:
                    partial_since = partial_since or time.monotonic()
                    timeout = max(0.0, partial_since + PARTIAL_FRAME_TIMEOUT - time.monotonic())
                else:
                    partial_since = 0.0
                try:
                    data = await asyncio.wait_for(reader.read(256 * 1024), timeout)
                except TimeoutError:
                    log.warning("dropped a client that left a frame incomplete for %.0fs",
                                PARTIAL_FRAME_TIMEOUT)  # fmt: skip
                    break
                if not data:
                    break
                items = decoder.feed(data)
                partial_since = 0.0 if items else partial_since  # the next frame's clock: later
                self._hold_budget()
                for item in items:
                    if isinstance(item, P.BadFrame):
                        self._refuse(writer, 0, item.reason)
                        if item.fatal:
                            raise ConnectionAbortedError(item.reason)
                    elif item.kind == P.DATA:
                        if attached is not None and P.split_stream(item.stream)[0] == attached:
                            assert self.agent is not None
                            await self.agent.forward(P.encode(P.DATA, item.stream, item.payload))
                    else:
                        msg = item.message()
                        try:
                            P.check_fields(msg)
                        except P.ProtocolError as exc:
                            self._refuse(writer, msg.get("id"), str(exc))
                            continue
                        if msg["op"] == "attach":
                            if self._attach(msg["proc"], writer, msg):
                                attached = msg["proc"]
                        else:
                            self._spawn(self._answer(msg, writer))
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self.clients.pop(writer, None)
            att = self.attachments.get(attached) if attached is not None else None
            if att is not None and att.writer is writer:
                att.writer = None
                att.done = True  # nobody reads its output any more
                if att.exit is None and not self.stop.is_set() and attached is not None:
                    self._orphaned(attached)
            writer.close()

    def _orphaned(self, proc: int) -> None:
        """The proxy of ``proc`` went away before its exit: the pid the caller holds (in
        --pid-file) stands for the process, so the process dies too, as under runc."""
        log.warning("the proxy of process %d went away: killing the process", proc)

        async def kill() -> None:
            if self.agent is not None:
                with contextlib.suppress(HyperpyError):
                    await self.agent.request(P.OP_SIGNAL, proc=proc, signal=signal.SIGKILL,
                                             timeout=10)  # fmt: skip

        self._spawn(kill())

    @staticmethod
    def _refuse(writer: asyncio.StreamWriter, req_id: object, error: str) -> None:
        req_id = req_id if isinstance(req_id, int) and not isinstance(req_id, bool) else 0
        writer.write(P.encode_msg(P.error_reply(req_id, error, "ProtocolError")))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _hold_budget(self) -> None:
        """Drop the clients holding the most incomplete-frame bytes while over budget."""
        total = sum(d.buffered for d in self.clients.values())
        while total > DECODE_BUDGET:
            writer, decoder = max(self.clients.items(), key=lambda kv: kv[1].buffered)
            log.warning("dropped a client holding %d bytes of an incomplete frame",
                        decoder.buffered)  # fmt: skip
            total -= decoder.buffered
            decoder.reset()
            self.clients.pop(writer, None)
            writer.transport.abort()

    def _attach(self, proc: int, writer: asyncio.StreamWriter, msg: dict) -> bool:
        """Make ``writer`` the one proxy of ``proc``; a second proxy is refused, so the exit
        always reaches the process's own proxy."""
        if proc not in self.procs:
            self._refuse(writer, msg.get("id"), f"no process {proc} in this sandbox")
            return False
        att = self._attachment(proc)
        if att.writer is not None and att.writer is not writer and not att.writer.is_closing():
            self._refuse(writer, msg.get("id"), f"process {proc} already has a proxy attached")
            return False
        att.attach(writer)
        writer.write(P.encode_msg(P.reply(msg)))
        for frame in att.pending:
            writer.write(frame)
        att.pending.clear()
        att.pending_bytes = 0
        if att.dropped:
            log.warning("process %d: %d bytes of output exceeded what is kept before its proxy "
                        "attached and were dropped", proc, att.dropped)  # fmt: skip
        if att.exit is not None:
            att.finish(writer)
        return True

    async def _answer(self, msg: dict, writer: asyncio.StreamWriter) -> None:
        try:
            result = await self.handle(msg)
            # An agent reply carries the agent's own request id: never the client's.
            out = P.reply(msg, **{k: v for k, v in result.items() if k not in ("id", "ok")})
        except SpecError as exc:
            out = P.error_reply(msg.get("id", 0), exc.message, "SpecError")
            out["pointer"] = exc.pointer
        except P.ProtocolError as exc:
            out = P.error_reply(msg.get("id", 0), str(exc), "ProtocolError")
        except HyperpyError as exc:
            out = P.error_reply(msg.get("id", 0), str(exc), type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - every failure is answered
            log.exception("request %s failed", msg.get("op"))
            out = P.error_reply(msg.get("id", 0), f"{type(exc).__name__}: {exc}", "HyperpyError")
        if not writer.is_closing():
            writer.write(P.encode_msg(out))

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
        if op in (P.OP_SIGNAL, P.OP_WINSIZE, P.OP_PS, P.OP_UPDATE, P.OP_STATS, P.OP_FREEZE):
            known = {k.rstrip("?") for k in P.FIELDS[op]}  # only what the op defines
            return await agent.request(op, **{k: v for k, v in msg.items() if k in known})
        if op == "info":
            return {
                "pid": os.getpid(),
                "qemu_pid": self.vm.pid if self.vm else 0,
                "timings": self.timings,
                "guest": self.guest,
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
        self.inits[cid] = reply["proc"]  # self.procs has it already (AgentLink.on_new_proc)
        self.state_dirs[cid] = msg.get("state_dir") or self.dir
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
        procs = [p for p, c in self.procs.items() if c == cid]
        # The agent reaps after it answers: say now how they ended, or their proxies would
        # wait for exits that come after the host forgot the processes.
        self._end(procs, 128 + signal.SIGKILL, signal.SIGKILL, "the container was deleted")
        assert self.vm is not None
        await self.vm.unshare(cid, self.dir)
        self.inits.pop(cid, None)
        self.state_dirs.pop(cid, None)
        for proc in procs:
            self.procs.pop(proc)
        return {}

    # --- main ---------------------------------------------------------------------------
    async def main(self, ready_fd: int) -> int:
        os.chdir(self.dir)
        request = json.loads(os.environ.get("HYPERPY_MONITOR_REQUEST", "{}"))
        try:
            info = await self.boot(request)
            self.server = await asyncio.start_unix_server(self.serve_client, path="monitor.sock")
        except BaseException as exc:
            _report(ready_fd, {"ok": False, "error": str(exc), "kind": type(exc).__name__})
            await self.cleanup()
            return 1
        _report(ready_fd, {"ok": True, "pid": os.getpid(), **info})
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

    async def cleanup(self) -> None:
        """Flush the proxies, stop QEMU, release the share: each step even if one fails."""
        try:
            if self.server is not None:
                self.server.close()
            for att in self.attachments.values():
                writer = att.writer  # the client's handler may drop it while we wait
                if writer is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(writer.drain(), 2)
                    writer.close()
        finally:
            try:
                if self.vm is not None:
                    await self.vm.shutdown()
            finally:
                if self.vm is not None:
                    self.vm.close()
                with contextlib.suppress(Exception):
                    network.unwire(self.wired or [])
                share.release(self.dir)
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.dir, "monitor.sock"))


def _remote_connection(config: Config) -> Any:
    """With [vm] driver = "remote", a TCP connection to the remote host, or None."""
    if config.vm.driver != "remote":
        return None
    from hyperpy.vm.ssh import tcp_connection

    return tcp_connection(config.remote)


def _report(fd: int, obj: dict) -> None:
    if fd < 0:
        return
    with contextlib.suppress(OSError):
        os.write(fd, json.dumps(obj).encode() + b"\n")
        os.close(fd)


def main() -> None:
    state_dir, ready_fd = sys.argv[1], int(sys.argv[2])
    level = logging.DEBUG if os.environ.get("HYPERPY_DEBUG") else logging.INFO
    to_file(os.path.join(state_dir, "monitor.log"),
            "%(asctime)s %(levelname)s %(name)s: %(message)s", level)  # fmt: skip
    request = json.loads(os.environ.get("HYPERPY_MONITOR_REQUEST", "{}"))
    try:
        config = load_config()
        sock = _remote_connection(config)  # before the pod's namespace: the host's network
        if request.get("network") is not None:  # first: every thread is then in it
            network.enter(request["network"].get("netns", ""))
        code = asyncio.run(Monitor(state_dir, config, sock).main(ready_fd))
    except Exception as exc:  # noqa: BLE001 - last resort: say why in the log and to create
        log.exception("monitor failed")
        _report(ready_fd, {"ok": False, "error": f"monitor failed: {exc}", "kind": "VMError"})
        code = 1
    logging.shutdown()
    os._exit(code)  # everything is released: skip the interpreter's teardown (delete waits)


if __name__ == "__main__":
    main()
