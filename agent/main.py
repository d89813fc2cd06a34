"""The guest agent: PID 1 of the hyperpy guest.

Owns, inside the guest: serving the one channel to the host, the containers and their
processes, their stdio, and reaping every zombie. What PID 1 does around that (the early
mounts, the 9p shares at hello, finding the channel, powering off) is ``agent/boot.py``'s.

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
import errno
import os
import selectors
import signal
import socket
import time
from typing import TYPE_CHECKING

from agent import cgroups, layers, linux
from agent import protocol as P
from agent.boot import (
    early_mounts,
    kernel_params,
    mount_shares,
    open_channel,
    poweroff,
    root_as_mount,
)
from agent.container import Launch, SetupError, Stdio, died, read_sync, spawn

if TYPE_CHECKING:
    from agent.dns import Relay

OUTBUF_HIGH = 4 << 20


def now_ms() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME) * 1000.0


class Process:
    """A container process as the agent tracks it."""

    def __init__(self, proc: int, cid: str, pid: int) -> None:
        self.proc = proc
        self.cid = cid
        self.pid = pid
        self.stdin_fd = -1
        self.stdin_buf = bytearray()
        self.stdin_eof = False
        self.outputs: dict[int, int] = {}  # fd -> stream id
        self.master = -1
        self.start_w = -1
        self.sync_r = -1
        self.status: int | None = None
        self.paused = False  # its reader on the host is behind (OP_FLOW)


class Container:
    def __init__(self, cid: str, init: Process, cgroup: str, spec: dict) -> None:
        self.cid = cid
        self.spec = spec
        self.init = init
        self.cgroup = cgroup  # its cgroup v2 directory in the guest
        self.procs: dict[int, Process] = {init.proc: init}


class Agent:
    def __init__(self, chan_fd: int, t_init: float, share_tag: str = P.SHARE_TAG) -> None:
        self.chan = chan_fd
        self.t_init = t_init
        self.share_tag = share_tag
        self.mounted = False
        self.sel = selectors.DefaultSelector()
        self.decoder = P.Decoder()
        self.outbuf = bytearray()
        self.containers: dict[str, Container] = {}
        self.procs: dict[int, Process] = {}
        self.by_pid: dict[int, Process] = {}
        self.next_proc = 1
        self.paused_outputs = False
        self.shutting_down = False
        self.dns: Relay | None = None  # agent/dns.py, once the host asks for it
        os.set_blocking(chan_fd, False)
        self.sel.register(chan_fd, selectors.EVENT_READ, self._on_channel)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self.sel.register(self.wake_r, selectors.EVENT_READ, self._on_wakeup)

    # --- channel ------------------------------------------------------------------------
    def send(self, frame: bytes) -> None:
        was_empty = not self.outbuf
        self.outbuf += frame
        if was_empty:
            self._flush()
        if self.outbuf and was_empty:
            self.sel.modify(
                self.chan, selectors.EVENT_READ | selectors.EVENT_WRITE, self._on_channel
            )
        if len(self.outbuf) > OUTBUF_HIGH and not self.paused_outputs:
            self._pause_outputs(True)

    def send_msg(self, msg: dict) -> None:
        if TRACE:
            trace(f"-> {msg}")
        self.send(P.encode_msg(msg))

    def _flush(self) -> None:
        while self.outbuf:
            try:
                n = os.write(self.chan, self.outbuf[: P.CHUNK * 4])
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EINTR):
                    return
                raise
            del self.outbuf[:n]

    def _on_channel(self, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush()
            if not self.outbuf:
                self.sel.modify(self.chan, selectors.EVENT_READ, self._on_channel)
                if self.paused_outputs:
                    self._pause_outputs(False)
        if not mask & selectors.EVENT_READ:
            return
        try:
            data = os.read(self.chan, 256 * 1024)
        except BlockingIOError:
            return
        if not data:
            # virtio-serial reads EOF while no host end is connected: wait for it.
            time.sleep(0.05)
            return
        for item in self.decoder.feed(data):
            if isinstance(item, P.BadFrame):
                self.send_msg(P.error_reply(0, item.reason, "ProtocolError"))
            elif item.kind == P.MSG:
                self._on_message(item.message())
            else:
                self._on_stdin(item.stream, item.payload)

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
        want = "1" if msg.get("freeze") else "0"
        with open(os.path.join(ctr.cgroup, "cgroup.freeze"), "w") as f:
            f.write(want)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            with open(os.path.join(ctr.cgroup, "cgroup.events")) as f:
                if f"frozen {want}" in f.read():
                    return {}
            time.sleep(0.005)
        raise ValueError(f"container {ctr.cid!r} did not {'freeze' if want == '1' else 'thaw'}")

    def op_update(self, msg: dict) -> dict:
        ctr = self.containers[msg["cid"]]
        cgroups.update(ctr.cgroup, msg.get("resources") or {})
        return {}

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
            status = read_sync(proc.sync_r)
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
            targets += self._pids_in_namespace(ctr.init.pid)
        else:
            targets = [self.procs[int(msg["proc"])].pid]
        for pid in dict.fromkeys(targets):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return {}

    def op_winsize(self, msg: dict) -> dict:
        import fcntl
        import struct
        import termios

        proc = self.procs[int(msg["proc"])]
        if proc.master >= 0:
            size = struct.pack("HHHH", int(msg["rows"]), int(msg["cols"]), 0, 0)
            fcntl.ioctl(proc.master, termios.TIOCSWINSZ, size)
        return {}

    def op_ps(self, msg: dict) -> dict:
        ctr = self.containers[msg["cid"]]
        pids = self._pids_in_namespace(ctr.init.pid)
        return {"pids": pids, "processes": [p for p in map(_proc_info, pids) if p]}

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
        proc = Process(self.next_proc, cid, pid)
        self.next_proc += 1
        proc.sync_r, proc.start_w = sync_r, start_w
        if terminal:
            master = self._receive_master(ours[0])
            if master >= 0:
                proc.master = master
                proc.stdin_fd = master
                proc.outputs[master] = P.stream_id(proc.proc, P.STDOUT)
        else:
            proc.stdin_fd = ours[0]
            proc.outputs[ours[1]] = P.stream_id(proc.proc, P.STDOUT)
            proc.outputs[ours[2]] = P.stream_id(proc.proc, P.STDERR)
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
        for fd in proc.outputs:
            os.set_blocking(fd, False)
        self._watch_outputs(proc)
        os.set_blocking(proc.stdin_fd, False)
        return proc

    def _receive_master(self, sock: int, timeout: float = 30.0) -> int:
        """The pty master the child opened in the container, or -1 if setup failed first."""
        with socket.socket(fileno=sock) as conn:
            conn.settimeout(timeout)
            try:
                _, fds, _, _ = socket.recv_fds(conn, 16, 1)
            except OSError:
                return -1
        return fds[0] if fds else -1

    def _read_sync(self, proc: Process, timeout: float = 30.0) -> dict:
        import select

        ready, _, _ = select.select([proc.sync_r], [], [], timeout)
        if not ready:
            return {"error": f"container process did not report within {timeout}s"}
        return read_sync(proc.sync_r)

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
        for fd in list(proc.outputs):
            self._close_output(proc, fd, send_eof=False)
        if proc.sync_r >= 0 and proc.sync_r in self.sel.get_map():
            self.sel.unregister(proc.sync_r)
        for attr in ("stdin_fd", "start_w", "sync_r"):
            fd = getattr(proc, attr)
            if fd >= 0 and fd != proc.master:
                os.close(fd)
            setattr(proc, attr, -1)
        if proc.master >= 0 and not proc.outputs:
            proc.master = -1

    def _set_winsize(self, fd: int, size: dict) -> None:
        import fcntl
        import struct
        import termios

        packed = struct.pack("HHHH", size.get("height", 24), size.get("width", 80), 0, 0)
        fcntl.ioctl(fd, termios.TIOCSWINSZ, packed)

    def _pids_in_namespace(self, init_pid: int) -> list[int]:
        """Every guest pid that shares init_pid's pid namespace (init first)."""
        try:
            target = os.readlink(f"/proc/{init_pid}/ns/pid")
        except OSError:
            return []
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == target:
                    pids.append(int(entry))
            except OSError:
                continue
        if target == os.readlink("/proc/self/ns/pid"):
            return [init_pid] if init_pid in pids else []
        return sorted(pids, key=lambda p: (p != init_pid, p))

    def _output_handler(self, proc: Process, fd: int):  # noqa: ANN202
        def handler(mask: int) -> None:
            self._read_output(proc, fd)

        return handler

    def _read_output(self, proc: Process, fd: int, drain: bool = False) -> None:
        while True:
            try:
                data = os.read(fd, P.CHUNK)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EIO:  # pty: every slave closed
                    data = b""
                else:
                    raise
            if not data:
                self._close_output(proc, fd, send_eof=True)
                return
            for frame in P.encode_data(proc.outputs[fd], data):
                self.send(frame)
            if not drain:
                return

    def _close_output(self, proc: Process, fd: int, send_eof: bool) -> None:
        stream = proc.outputs.pop(fd, None)
        if stream is None:
            return
        try:
            self.sel.unregister(fd)
        except (KeyError, ValueError):
            pass
        if send_eof:
            self.send(P.encode(P.DATA, stream, b""))
        if fd != proc.stdin_fd:
            os.close(fd)
        elif proc.master == fd:
            proc.stdin_fd = -1
            proc.master = -1
            os.close(fd)

    def _pause_outputs(self, pause: bool) -> None:
        """Every process's output, while the channel's own buffer is over OUTBUF_HIGH."""
        self.paused_outputs = pause
        for proc in self.procs.values():
            self._watch_outputs(proc)

    def _watch_outputs(self, proc: Process) -> None:
        """Read ``proc``'s outputs unless the channel or its host reader is behind."""
        want = not (self.paused_outputs or proc.paused)
        watched = self.sel.get_map()
        for fd in proc.outputs:
            if want and fd not in watched:
                self.sel.register(fd, selectors.EVENT_READ, self._output_handler(proc, fd))
            elif not want and fd in watched:
                self.sel.unregister(fd)

    def op_flow(self, msg: dict) -> dict:
        proc = self.procs.get(int(msg["proc"]))
        if proc is not None:  # else it is gone, and so is its output
            proc.paused = bool(msg["pause"])
            self._watch_outputs(proc)
        return {}

    # --- stdin --------------------------------------------------------------------------
    def _on_stdin(self, stream: int, data: bytes) -> None:
        proc_id, fd = P.split_stream(stream)
        proc = self.procs.get(proc_id)
        if proc is None or fd != P.STDIN or proc.stdin_fd < 0 or proc.stdin_eof:
            return  # the process is gone: its stdin is discarded, as a closed pipe would
        if not data:
            proc.stdin_eof = True
        else:
            proc.stdin_buf += data
        self._write_stdin(proc)

    def _write_stdin(self, proc: Process) -> None:
        fd = proc.stdin_fd
        while proc.stdin_buf:
            try:
                n = os.write(fd, proc.stdin_buf[: P.CHUNK])
            except BlockingIOError:
                break
            except OSError:  # EPIPE: the process closed its stdin
                proc.stdin_buf.clear()
                break
            del proc.stdin_buf[:n]
        registered = self.sel.get_map().get(fd) if fd not in proc.outputs else None
        if proc.stdin_buf:
            if fd in proc.outputs:
                return  # a pty master: written again when output is read (rare: tty input)
            if registered is None:
                self.sel.register(fd, selectors.EVENT_WRITE, lambda _m: self._write_stdin(proc))
            return
        if registered is not None:
            self.sel.unregister(fd)
        if proc.stdin_eof:
            if proc.master >= 0:
                os.write(proc.master, b"\x04")  # a terminal's EOF is ^D
            else:
                os.close(fd)
                proc.stdin_fd = -1

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
            for fd in list(proc.outputs):
                self._read_output(proc, fd, drain=True)
                self._close_output(proc, fd, send_eof=True)
            if proc.stdin_fd >= 0:
                try:
                    self.sel.unregister(proc.stdin_fd)
                except (KeyError, ValueError):
                    pass
                if proc.stdin_fd != proc.master:
                    os.close(proc.stdin_fd)
                proc.stdin_fd = -1
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
        while not (self.shutting_down and not self.outbuf):
            for key, mask in self.sel.select(timeout=1.0):
                key.data(mask)
            self.reap()
        poweroff()


TRACE = False


def _proc_info(pid: int) -> dict | None:
    """pid, ppid, uid, state and command line of a guest process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").strip().decode(errors="replace")
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None
    comm_end = stat.rfind(")")
    fields = stat[comm_end + 2 :].split()
    comm = stat[stat.find("(") + 1 : comm_end]
    return {"pid": pid, "ppid": int(fields[1]), "uid": uid, "state": fields[0],
            "cmd": cmd or f"[{comm}]"}  # fmt: skip


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
