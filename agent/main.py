"""The guest agent: PID 1 of the hyperpy guest.

Owns, inside the guest: the table of operations (the ``op_*`` methods) the host's requests
are dispatched to, the containers and their processes, and reaping every zombie. The
channel's framing, buffer and flow control are ``agent/channel.py``'s, each process's stdio
``agent/streams.py``'s. What PID 1 does around that (the early mounts, the 9p shares at
hello, finding the channel, powering off) is ``agent/boot.py``'s.

One thread and one ``selectors`` loop: the channel, every process's stdout/stderr (or pty
master), stdin writes with their own buffers, and a wakeup pipe for SIGCHLD. Requests are
handled in arrival order; a request that fails gets an error reply, a frame that cannot be
read gets a ``ProtocolError`` reply, and the loop goes on.

Kernel command line keys read here (through ``boot.kernel_params``)::

    hyperpy.channel=serial:<port name> | vsock:<port>
    hyperpy.share=<9p mount tag>        (default: hyperpy)
    hyperpy.debug=1                     (each message traced on the console)
"""

from __future__ import annotations

import base64
import os
import selectors
import signal
import socket
import time
from typing import TYPE_CHECKING

from agent import cgroups, layers, linux, procfs, sync, vcpus
from agent import protocol as P
from agent.boot import (
    early_mounts,
    kernel_params,
    mount_shares,
    open_channel,
    poweroff,
    root_as_mount,
)
from agent.channel import Channel
from agent.container import Launch, SetupError, Stdio, died, spawn
from agent.streams import ProcessIO
from agent.terminal import receive_master, set_winsize

if TYPE_CHECKING:
    from agent.dns import Relay


def now_ms() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME) * 1000.0


class Process:
    """A container process as the agent tracks it."""

    def __init__(self, proc: int, cid: str, pid: int, io: ProcessIO) -> None:
        self.proc = proc
        self.cid = cid
        self.pid = pid
        self.io = io  # its stdio (agent/streams.py)
        self.start_w = -1
        self.sync_r = -1
        self.status: int | None = None


class Container:
    def __init__(self, cid: str, init: Process, cgroup: str, spec: dict) -> None:
        self.cid = cid
        self.spec = spec
        self.init = init
        self.cgroup = cgroup  # its cgroup v2 directory in the guest
        self.procs: dict[int, Process] = {init.proc: init}


class Agent:
    def __init__(self, chan_fd: int, t_init: float, share_tag: str = P.SHARE_TAG) -> None:
        self.t_init = t_init
        self.share_tag = share_tag
        self.mounted = False
        self.sel = selectors.DefaultSelector()
        self.containers: dict[str, Container] = {}
        self.procs: dict[int, Process] = {}
        self.by_pid: dict[int, Process] = {}
        self.next_proc = 1
        self.shutting_down = False
        self.dns: Relay | None = None  # agent/dns.py, once the host asks for it
        self.chan = Channel(
            chan_fd, self.sel, self._on_message, self._on_stdin, self._on_congestion,
            trace if TRACE else None,
        )  # fmt: skip
        self.send_msg = self.chan.send_msg
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self.sel.register(self.wake_r, selectors.EVENT_READ, self._on_wakeup)

    # --- requests -----------------------------------------------------------------------
    def _on_message(self, msg: dict) -> None:
        if TRACE:
            trace(f"<- {msg.get('id')} {msg.get('op')}")
        op = msg.get("op")
        handler = getattr(self, f"op_{op}", None) if isinstance(op, str) else None
        req_id = msg.get("id", 0) if isinstance(msg.get("id", 0), int) else 0
        try:
            P.check_fields(msg)
        except P.ProtocolError as exc:
            self.send_msg(P.error_reply(req_id, str(exc), "ProtocolError"))
            return
        if handler is None:
            self.send_msg(P.error_reply(req_id, f"unknown operation {op!r}", "ProtocolError"))
            return
        try:
            result = handler(msg) or {}
        except SetupError as exc:
            reply = P.error_reply(req_id, str(exc), "SpecError")
            reply["pointer"] = exc.pointer
            self.send_msg(reply)
            return
        except KeyError as exc:
            self.send_msg(P.error_reply(req_id, f"missing or unknown {exc}", "AgentError"))
            return
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error reply
            self.send_msg(P.error_reply(req_id, f"{type(exc).__name__}: {exc}", "AgentError"))
            return
        self.send_msg(P.reply(msg, **result))

    # --- operations ---------------------------------------------------------------------
    def op_hello(self, msg: dict) -> dict:
        if msg.get("version") != P.PROTOCOL_VERSION:
            raise ValueError(
                f"host speaks protocol {msg.get('version')}, agent {P.PROTOCOL_VERSION}"
            )
        if isinstance(msg.get("time_ns"), int):
            # The guest has no RTC on microvm: its wall clock starts at the host's (and a
            # guest restored from a template would otherwise run at the template's time).
            time.clock_settime_ns(time.CLOCK_REALTIME, msg["time_ns"])
        if msg.get("seed"):
            # Pods restored from one template start with the same RNG state: mix in fresh
            # host entropy and reseed before any container can read a random byte.
            linux.reseed_rng(base64.b64decode(msg["seed"]))
        if not self.mounted:
            # After hello, not at boot: a template is saved before its guest mounts anything
            # (virtio-9p blocks migration while mounted), so every pod mounts its share here.
            mount_shares(self.share_tag)
            self.mounted = True
        return {"version": P.PROTOCOL_VERSION, "init_ms": self.t_init, "now_ms": now_ms()}

    def op_create(self, msg: dict) -> dict:
        cid = msg["cid"]
        if cid in self.containers:
            raise ValueError(f"container {cid!r} exists in this guest")
        spec = msg["spec"]
        linux_cfg = spec.get("linux") or {}
        for i, ns in enumerate(linux_cfg.get("namespaces") or []):
            path = ns.get("path") or ""
            if path.startswith("hyperpy:"):  # another container of this VM, named by the host
                other = self.containers.get(path[len("hyperpy:") :])
                if other is None or other.init.status is not None:
                    raise SetupError(f"{path[8:]!r} is not running in this VM",
                                     f"/linux/namespaces/{i}/path")  # fmt: skip
                kind = linux.NAMESPACE_FILES.get(ns.get("type", ""), "")
                ns["path"] = f"/proc/{other.init.pid}/ns/{kind}"
        cgroup = cgroups.create(
            cid, linux_cfg.get("cgroupsPath", ""), linux_cfg.get("resources") or {}
        )
        try:
            layers.ephemeral(spec)
            rootfs = layers.mount(cid, msg.get("rootfs", ""), msg.get("root_layer") == "host")
            launch = Launch({}, spec, rootfs)
            launch.cgroup_procs = os.path.join(cgroup, "cgroup.procs")
            launch.no_pivot = bool(msg.get("no_pivot"))
            proc = self._spawn(cid, spec.get("process") or {}, launch, gate=True)
        except BaseException:
            layers.remove(cid)
            cgroups.remove(cgroup)
            raise
        self.containers[cid] = Container(cid, proc, cgroup, spec)
        return {"proc": proc.proc, "pid": proc.pid}

    def op_network(self, msg: dict) -> dict:
        """The pod's NICs into ``cid``'s network namespace (agent/network.py)."""
        from agent.network import configure

        pid = self.containers[msg["cid"]].init.pid
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            configure(fd, msg)
            if msg.get("dns"):
                from agent.dns import Relay

                self.dns = self.dns or Relay(self.sel, self.send_msg)
                self.dns.listen(fd, [str(s) for s in msg["dns"]])
        finally:
            os.close(fd)
        return {}

    def op_dns_reply(self, msg: dict) -> dict:
        if self.dns is not None:
            self.dns.reply(msg["q"], msg["data"])
        return {}

    def op_freeze(self, msg: dict) -> dict:
        """Pause (freeze: true) or resume the container through its cgroup's freezer."""
        ctr = self.containers[msg["cid"]]
        freeze = bool(msg.get("freeze"))
        if not cgroups.freeze(ctr.cgroup, freeze):
            raise ValueError(f"container {ctr.cid!r} did not {'freeze' if freeze else 'thaw'}")
        return {}

    def op_update(self, msg: dict) -> dict:
        ctr = self.containers[msg["cid"]]
        cgroups.update(ctr.cgroup, msg.get("resources") or {})
        return {}

    def op_resize(self, msg: dict) -> dict:
        if msg.get("vcpus"):
            vcpus.set_online(msg["vcpus"])
        return vcpus.report()

    def op_stats(self, msg: dict) -> dict:
        ctr = self.containers[msg["cid"]]
        return {"stats": cgroups.stats(ctr.cgroup), "oom_kills": cgroups.oom_kills(ctr.cgroup)}

    def op_start(self, msg: dict) -> dict:
        init = self.containers[msg["cid"]].init
        if init.start_w < 0:
            raise ValueError(f"container {msg['cid']!r} was already started")
        os.write(init.start_w, b"S")
        os.close(init.start_w)
        init.start_w = -1
        # As runc's start, which returns once the process passed its exec fifo: what follows
        # (the seccomp filter, execve: args[0] was found at create) is the process's own.
        # A failure there is on its stderr and in its exit status (127), not start's reply.
        self.sel.register(init.sync_r, selectors.EVENT_READ, self._exec_reported(init))
        return {"started_ms": now_ms()}

    def _exec_reported(self, proc: Process):  # noqa: ANN202
        def handler(mask: int) -> None:
            status = sync.read(proc.sync_r)
            if "error" in status and TRACE:
                trace(f"{proc.cid}: exec after start failed: {status['error']}")
            self.sel.unregister(proc.sync_r)
            os.close(proc.sync_r)
            proc.sync_r = -1

        return handler

    def op_exec(self, msg: dict) -> dict:
        ctr = self.containers[msg["cid"]]
        if ctr.init.status is not None:
            raise ValueError(f"container {ctr.cid!r} is not running")
        # exec'd processes get the container's seccomp profile too, as under runc
        seccomp = (ctr.spec.get("linux") or {}).get("seccomp")
        launch = Launch({}, {"linux": {"seccomp": seccomp}} if seccomp else {}, "", ctr.init.pid)
        launch.cgroup_procs = os.path.join(ctr.cgroup, "cgroup.procs")
        proc = self._spawn(ctr.cid, msg["process"], launch, gate=False)
        ctr.procs[proc.proc] = proc
        self._await_exec(proc)
        return {"proc": proc.proc, "pid": proc.pid}

    def op_signal(self, msg: dict) -> dict:
        sig = int(msg["signal"])
        if msg.get("all"):
            ctr = self.containers[msg["cid"]]
            targets = [p.pid for p in ctr.procs.values() if p.status is None]
            targets += procfs.pids_in_namespace(ctr.init.pid)
        else:
            targets = [self.procs[int(msg["proc"])].pid]
        for pid in dict.fromkeys(targets):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return {}

    def op_winsize(self, msg: dict) -> dict:
        proc = self.procs[int(msg["proc"])]
        if proc.io.master >= 0:
            set_winsize(proc.io.master, int(msg["rows"]), int(msg["cols"]))
        return {}

    def op_flow(self, msg: dict) -> dict:
        proc = self.procs.get(int(msg["proc"]))
        if proc is not None:  # else it is gone, and so is its output
            proc.io.flow(bool(msg["pause"]))
        return {}

    def op_ps(self, msg: dict) -> dict:
        ctr = self.containers[msg["cid"]]
        pids = procfs.pids_in_namespace(ctr.init.pid)
        return {"pids": pids, "processes": [p for p in map(procfs.process_info, pids) if p]}

    def op_destroy(self, msg: dict) -> dict:
        ctr = self.containers.pop(msg["cid"], None)
        if ctr is None:
            return {}
        for proc in ctr.procs.values():
            if proc.status is None:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self._close_proc(proc)
        cgroups.remove(ctr.cgroup)
        layers.remove(ctr.cid)
        return {}

    def op_shutdown(self, msg: dict) -> dict:
        self.shutting_down = True
        return {}

    # --- processes ----------------------------------------------------------------------
    def _spawn(self, cid: str, process: dict, launch: Launch, gate: bool) -> Process:
        terminal = bool(process.get("terminal"))
        launch.process = process
        ours: list[int] = []
        theirs: list[int] = []
        try:
            if terminal:
                mine, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                ours.append(mine.detach())
                theirs.append(child.detach())
                launch.stdio = Stdio(pty_socket=theirs[0])
            else:
                in_r, in_w = os.pipe2(os.O_CLOEXEC)
                out_r, out_w = os.pipe2(os.O_CLOEXEC)
                err_r, err_w = os.pipe2(os.O_CLOEXEC)
                ours += [in_w, out_r, err_r]
                theirs += [in_r, out_w, err_w]
                launch.stdio = Stdio(in_r, out_w, err_w)
            pid, sync_r, start_w = spawn(launch, gate)
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        proc = Process(self.next_proc, cid, pid, ProcessIO(self.next_proc, self.chan))
        self.next_proc += 1
        proc.sync_r, proc.start_w = sync_r, start_w
        if terminal:
            master = receive_master(ours[0])
            if master >= 0:
                proc.io.pty(master)
        else:
            proc.io.pipes(*ours)
        self.procs[proc.proc] = proc
        self.by_pid[pid] = proc
        if gate:
            status = self._read_sync(proc)
            if status.get("exec"):  # EOF: it cannot have exec'd before the gate, so it died
                message, pointer = died(launch)
                status = {"error": message, "pointer": pointer}
            if "error" in status:
                self._fail(proc)
                raise SetupError(status["error"], status.get("pointer", ""))
        proc.io.start()
        return proc

    def _read_sync(self, proc: Process, timeout: float = 30.0) -> dict:
        import select

        ready, _, _ = select.select([proc.sync_r], [], [], timeout)
        if not ready:
            return {"error": f"container process did not report within {timeout}s"}
        return sync.read(proc.sync_r)

    def _await_exec(self, proc: Process) -> dict:
        status = self._read_sync(proc)
        os.close(proc.sync_r)
        proc.sync_r = -1
        if "error" in status:
            raise SetupError(status["error"], status.get("pointer", ""))
        return {}

    def _fail(self, proc: Process) -> None:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._close_proc(proc)
        self.procs.pop(proc.proc, None)
        self.by_pid.pop(proc.pid, None)  # reaped silently: it never existed for the host

    def _close_proc(self, proc: Process) -> None:
        proc.io.close(exited=False)
        if proc.sync_r >= 0 and proc.sync_r in self.sel.get_map():
            self.sel.unregister(proc.sync_r)
        for attr in ("start_w", "sync_r"):
            fd = getattr(proc, attr)
            if fd >= 0:
                os.close(fd)
            setattr(proc, attr, -1)

    # --- stdin and congestion, from the channel -----------------------------------------
    def _on_stdin(self, stream: int, data: bytes) -> None:
        proc_id, fd = P.split_stream(stream)
        proc = self.procs.get(proc_id)
        if proc is not None and fd == P.STDIN:
            proc.io.write_stdin(data)  # a process that is gone: discarded

    def _on_congestion(self) -> None:
        """The channel's buffer went over its bound or emptied: every output follows."""
        for proc in self.procs.values():
            proc.io.watch()

    # --- reaping ------------------------------------------------------------------------
    def _on_wakeup(self, mask: int) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            proc = self.by_pid.pop(pid, None)
            if proc is None:
                continue  # an orphan re-parented to PID 1
            code = os.waitstatus_to_exitcode(status)
            sig = -code if code < 0 else None
            proc.status = 128 + sig if sig else code
            proc.io.close(exited=True)
            # what it wrote (mmap'd pages too) is on the host before its exit is, as under
            # runc: with [vm] files = "faithful" the pod may be gone right after
            os.sync()
            self.send_msg(
                {
                    "event": P.EV_EXIT,
                    "cid": proc.cid,
                    "proc": proc.proc,
                    "status": proc.status,
                    "signal": sig,
                    "t_ms": now_ms(),
                    "oom": self._oom_killed(proc),
                }
            )

    def _oom_killed(self, proc: Process) -> bool:
        """Whether a container's init ends a life in which its cgroup counted an OOM kill
        (as docker's State.OOMKilled and CRI's OOMKilled mean it): the host tells its clients
        (hyperpy/hostoom.py)."""
        ctr = self.containers.get(proc.cid)
        if ctr is None or ctr.init is not proc or not ctr.cgroup:
            return False
        try:
            return cgroups.oom_kills(ctr.cgroup) > 0
        except (OSError, ValueError):
            return False

    def run(self) -> None:
        self.send_msg(
            {
                "event": P.EV_READY,
                "version": P.PROTOCOL_VERSION,
                "init_ms": self.t_init,
                "ready_ms": now_ms(),
            }
        )
        while not (self.shutting_down and not self.chan.pending):
            for key, mask in self.sel.select(timeout=1.0):
                key.data(mask)
            self.reap()
        poweroff()


TRACE = False


def trace(text: str) -> None:
    """With hyperpy.debug=1 on the kernel command line: one line on the console."""
    os.write(2, f"hyperpy-agent: {text[:300]}\n".encode(errors="replace"))


def main(t_init: float) -> None:
    try:
        os.makedirs("/proc", exist_ok=True)
        params = {}
        root_as_mount()
        early_mounts()
        params = kernel_params()
        global TRACE
        TRACE = params.get("hyperpy.debug") == "1"
        chan = open_channel(params.get("hyperpy.channel", "serial:agent"))
        Agent(chan, t_init, params.get("hyperpy.share", P.SHARE_TAG)).run()
    except BaseException as exc:  # noqa: BLE001 - PID 1 must not exit: say why, power off
        import traceback

        print(f"hyperpy agent: fatal: {exc!r}", flush=True)
        traceback.print_exc()
        poweroff()
