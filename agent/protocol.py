"""The wire format between host and guest agent: the single definition, imported by both.

Owns framing, the protocol version and the message vocabulary. Standard library only: the
guest imports this module at boot, so it stays small and imports little.

A frame is a 12-byte header followed by ``length`` payload bytes::

    offset  size  field
    0       2     magic   b"HY"
    2       1     version PROTOCOL_VERSION
    3       1     kind    MSG (JSON object) | DATA (raw stream bytes)
    4       4     stream  big-endian u32; 0 for MSG, the stream id for DATA
    8       4     length  big-endian u32; at most MAX_PAYLOAD

MSG payloads are UTF-8 JSON objects: a request ``{"id": N, "op": ..., ...}``, its reply
``{"id": N, "ok": true, ...}`` or ``{"id": N, "ok": false, "error": "...", "kind": "..."}``,
or an event ``{"event": ..., ...}`` (no id). DATA frames carry a process's stdio: a frame of
length 0 is end-of-file on that stream. Stream ids are ``proc * 4 + fd`` (fd 0, 1, 2).

The same framing is spoken on the host between the CLI, the process proxies and the sandbox
monitor (over a unix socket), so there is one reader and one writer to test.

A reader never crashes on bad input: :class:`Decoder` turns a bad magic, an unknown version
or kind, an oversize length or a payload that is not a JSON object into a :class:`BadFrame`,
resynchronises on the next magic (or skips the oversize payload) and goes on; an oversize
length is ``fatal`` for a reader that can drop its peer (the monitor closes that client).
:func:`check_fields` refuses a message whose fields are missing or of the wrong type, naming
the field, before any handler reads it: both ends treat what the other sends as hostile.
"""

from __future__ import annotations

import json
import struct

MAGIC = b"HY"
PROTOCOL_VERSION = 3  # 2: the network operation; 3: resize
HEADER = struct.Struct(">2sBBII")
HEADER_SIZE = HEADER.size
MAX_PAYLOAD = 1 << 20
CHUNK = 64 * 1024

MSG = 1
DATA = 2

STDIN, STDOUT, STDERR = 0, 1, 2

# Where the guest mounts the 9p shares: the writable one (the sandbox's shared/ dir:
# read-write volumes) and the read-only image one (image/: rootfs and read-only volumes).
GUEST_SHARE_DIR = "/run/hyperpy/shared"
SHARE_TAG = "hyperpy"
GUEST_IMAGE_DIR = "/run/hyperpy/image"
IMAGE_TAG = "hyperpy-image"
# Memory-backed volumes that stay in the guest (CRI's /dev/shm, Kubernetes' memory emptyDir):
# a tmpfs per host source, shared by the pod's containers.
GUEST_EPHEMERAL_DIR = "/run/hyperpy/ephemeral"

# Requests (host -> agent unless noted) and events (agent -> host).
# version handshake, then the guest's clock, a fresh RNG seed and the 9p mounts:
# {"version", "time_ns"?, "seed"?: base64 host entropy} -> {"version", "init_ms", "now_ms"}
OP_HELLO = "hello"
OP_CREATE = "create"  # {"cid", "spec", "rootfs", "root_layer", "no_pivot"} -> {"proc", "pid"}
OP_START = "start"  # {"cid"} -> {}
OP_EXEC = "exec"  # {"cid", "process"} -> {"proc", "pid"}
OP_SIGNAL = "signal"  # {"cid", "proc" | "all": true, "signal"} -> {}
OP_WINSIZE = "winsize"  # {"proc", "rows", "cols"} -> {}
OP_PS = "ps"  # {"cid"} -> {"pids", "processes": [{"pid", "ppid", "uid", "state", "cmd"}]}
OP_FREEZE = "freeze"  # {"cid", "freeze": bool} -> {} once cgroup.events says so
OP_UPDATE = "update"  # {"cid", "resources": OCI linux.resources} -> {}
OP_STATS = "stats"  # {"cid"} -> {"stats": runc events --stats data, "oom_kills"}
OP_DESTROY = "destroy"  # {"cid"} -> {}
# the guest's vCPUs online, and its memory: {"vcpus"?} -> {"online": [cpu], "present",
# "mem_total_kb", "mem_available_kb"} (agent/vcpus.py)
OP_RESIZE = "resize"
# {"proc", "pause": bool} -> {}: stop (or resume) reading a process's output, whose writes
# then block in the guest as on a full pipe; the host asks while its proxy reads slowly
OP_FLOW = "flow"
OP_SHUTDOWN = "shutdown"  # {} -> {} then the guest powers off
# {"cid", "interfaces": [{"boot_mac", "name", "mac", "mtu", "addresses": [{"ip", "prefixlen",
# "family"}]}], "routes": [{"dst", "dev", "family", "scope", "gateway"?, "src"?, "metric"?}],
# "neighbors": [{"dev", "ip", "mac"}], "dns"?: [loopback nameservers to relay]} -> {}: the
# NICs move into cid's network namespace (agent/network.py); queries to "dns" come to the
# host as EV_DNS events, answered by OP_DNS_REPLY (agent/dns.py)
OP_NETWORK = "network"
OP_DNS_REPLY = "dns_reply"  # {"q", "data": base64} -> {}
EV_DNS = "dns"  # {"q", "server", "data": base64}
# {"proc", "cid", "status", "signal", "oom"}: oom for a container's init whose cgroup counted
# an OOM kill in its life
EV_EXIT = "exit"
EV_READY = "ready"  # sent by the agent once its channel is open: {"version", "boot_ms"}


class FrameError(ValueError):
    """A frame could not be encoded (oversize payload, bad kind, bad stream)."""


class ProtocolError(ValueError):
    """A message's fields are missing or mistyped; the text names the field."""


# Fields each request must carry (name -> type); "?" marks an optional one.
_OBJ, _STR, _INT, _BOOL, _LIST = dict, str, int, bool, list
FIELDS: dict[str, dict[str, type]] = {
    OP_HELLO: {"version": _INT, "time_ns?": _INT, "seed?": _STR},
    OP_CREATE: {
        "cid": _STR,
        "spec": _OBJ,
        "rootfs?": _STR,
        "root_layer?": _STR,  # "host": the root itself, written through; "guest": an overlay
        "bundle?": _STR,
        "state_dir?": _STR,
        "no_pivot?": _BOOL,
    },  # fmt: skip
    OP_START: {"cid": _STR},
    OP_EXEC: {"cid": _STR, "process": _OBJ},
    OP_SIGNAL: {"cid?": _STR, "signal": _INT, "proc?": _INT, "all?": _BOOL},
    OP_WINSIZE: {"proc": _INT, "rows": _INT, "cols": _INT},
    OP_PS: {"cid": _STR},
    OP_FREEZE: {"cid": _STR, "freeze": _BOOL},
    OP_UPDATE: {"cid": _STR, "resources": _OBJ},
    OP_STATS: {"cid": _STR},
    OP_DESTROY: {"cid": _STR},
    OP_RESIZE: {"vcpus?": _INT},
    OP_FLOW: {"proc": _INT, "pause": _BOOL},
    OP_SHUTDOWN: {},
    OP_NETWORK: {
        "cid": _STR,
        "interfaces": _LIST,
        "routes": _LIST,
        "neighbors": _LIST,
        "dns?": _LIST,
    },
    OP_DNS_REPLY: {"q": _INT, "data": _STR},
    "wire": {"cid": _STR, "dns?": _LIST},
    "attach": {"proc": _INT},
    "remove": {"cid": _STR},
    "info": {},
}


def check_fields(msg: dict) -> None:
    """Raise ProtocolError naming the first missing or mistyped field of request ``msg``."""
    if not isinstance(msg.get("id", 0), int) or isinstance(msg.get("id", 0), bool):
        raise ProtocolError("field 'id' must be an integer")
    op = msg.get("op")
    if not isinstance(op, str) or op not in FIELDS:
        raise ProtocolError(f"unknown operation {op!r}")
    for key, kind in FIELDS[op].items():
        name = key.rstrip("?")
        if name not in msg:
            if key.endswith("?"):
                continue
            raise ProtocolError(f"{op}: field {name!r} is missing")
        value = msg[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ProtocolError(f"{op}: field {name!r} must be {kind.__name__}, not {value!r:.40}")


class Frame:
    __slots__ = ("kind", "stream", "payload")

    def __init__(self, kind: int, stream: int, payload: bytes) -> None:
        self.kind = kind
        self.stream = stream
        self.payload = payload

    def message(self) -> dict:
        return json.loads(self.payload)

    def __repr__(self) -> str:
        return f"Frame(kind={self.kind}, stream={self.stream}, len={len(self.payload)})"


class BadFrame:
    """What the decoder yields for input it had to reject; ``reason`` says why. ``fatal``:
    the peer announced an oversize frame, and a reader that can should drop it."""

    __slots__ = ("reason", "fatal")

    def __init__(self, reason: str, fatal: bool = False) -> None:
        self.reason = reason
        self.fatal = fatal

    def __repr__(self) -> str:
        return f"BadFrame({self.reason!r})"


def encode(kind: int, stream: int, payload: bytes) -> bytes:
    if kind not in (MSG, DATA):
        raise FrameError(f"unknown frame kind {kind}")
    if not 0 <= stream <= 0xFFFFFFFF:
        raise FrameError(f"stream id {stream} out of range")
    if len(payload) > MAX_PAYLOAD:
        raise FrameError(f"payload of {len(payload)} bytes exceeds MAX_PAYLOAD={MAX_PAYLOAD}")
    return HEADER.pack(MAGIC, PROTOCOL_VERSION, kind, stream, len(payload)) + payload


def encode_msg(msg: dict) -> bytes:
    return encode(MSG, 0, json.dumps(msg, separators=(",", ":")).encode())


def encode_data(stream: int, data: bytes) -> list[bytes]:
    """DATA frames for ``data`` split into CHUNK pieces; ``b""`` gives the one EOF frame."""
    if not data:
        return [encode(DATA, stream, b"")]
    return [encode(DATA, stream, data[i : i + CHUNK]) for i in range(0, len(data), CHUNK)]


def stream_id(proc: int, fd: int) -> int:
    return proc * 4 + fd


def split_stream(stream: int) -> tuple[int, int]:
    return stream // 4, stream % 4


class Decoder:
    """Incremental frame reader: ``feed(bytes)`` returns the complete Frames and BadFrames."""

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self._buf = bytearray()
        self._skip = 0
        self._max = max_payload

    def feed(self, data: bytes) -> list[Frame | BadFrame]:
        self._buf += data
        out: list[Frame | BadFrame] = []
        while True:
            if self._skip:
                n = min(self._skip, len(self._buf))
                del self._buf[:n]
                self._skip -= n
                if self._skip:
                    return out
            if len(self._buf) < HEADER_SIZE:
                if self._buf and not MAGIC.startswith(bytes(self._buf[:2])):
                    out.append(self._resync("bad magic"))
                    continue
                return out
            magic, version, kind, stream, length = HEADER.unpack_from(self._buf)
            if magic != MAGIC:
                out.append(self._resync(f"bad magic {bytes(magic)!r}"))
                continue
            if version != PROTOCOL_VERSION:
                out.append(self._resync(f"unsupported protocol version {version}"))
                continue
            if kind not in (MSG, DATA):
                out.append(self._resync(f"unknown frame kind {kind}"))
                continue
            if length > self._max:
                del self._buf[:HEADER_SIZE]
                self._skip = length
                out.append(
                    BadFrame(f"frame of {length} bytes exceeds the limit of {self._max}", True)
                )
                continue
            if len(self._buf) < HEADER_SIZE + length:
                return out
            payload = bytes(self._buf[HEADER_SIZE : HEADER_SIZE + length])
            del self._buf[: HEADER_SIZE + length]
            if kind == MSG:
                try:
                    obj = json.loads(payload)
                except (ValueError, RecursionError) as exc:
                    out.append(BadFrame(f"message is not valid JSON: {exc}"))
                    continue
                if not isinstance(obj, dict):
                    out.append(BadFrame("message is not a JSON object"))
                    continue
            out.append(Frame(kind, stream, payload))

    def reset(self) -> None:
        self._buf.clear()
        self._skip = 0

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return len(self._buf)

    def _resync(self, reason: str) -> BadFrame:
        """Drop bytes up to the next possible magic and report what was dropped."""
        idx = self._buf.find(MAGIC, 1)
        if idx < 0:
            # Keep a trailing b"H": it may be the start of the next magic.
            keep = 1 if self._buf.endswith(MAGIC[:1]) else 0
            dropped = len(self._buf) - keep
            del self._buf[:dropped]
        else:
            dropped = idx
            del self._buf[:idx]
        return BadFrame(f"{reason}; skipped {dropped} bytes")


def reply(req: dict, **fields: object) -> dict:
    return {"id": req.get("id", 0), "ok": True, **fields}


def error_reply(req_id: int, error: str, kind: str = "AgentError") -> dict:
    return {"id": req_id, "ok": False, "error": error, "kind": kind}
