"""A stand-in for a guest that took over its QEMU, at the exact host interface: the
monitor's end of the agent channel (tests/vm/test_bounds_channel.py).

Run as [vm] qemu (``hostile_qemu.py CONTROL STATUS REAL_QEMU ARGV...``, the jail off): it
starts the real QEMU with the agent channel on a socketpair of its own and relays each
whole frame between that and the monitor's socket, so the pod works as usual, and puts
between the agent's frames what the line in CONTROL asks for, until it has sent the given
number of bytes of it:

- ``garbage N``: bytes that are no frame, bad versions, MSG frames that are no JSON object;
- ``events N``: events and replies nobody asked for (exits of unknown processes, unknown
  events, errors without a request);
- ``data N PROC``: stdout of process PROC, heedless of flow control;
- ``deaf``: nothing sent, and nothing read from the monitor (a guest that stops reading);
- ``oversize``: one frame header announcing 4 GiB.

STATUS gets ``{"sent": {mode: bytes}, "procs": [...]}`` (the processes the agent's replies
named), rewritten as it changes.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from agent import protocol as P  # noqa: E402

CONTROL, STATUS, REAL = sys.argv[1:4]
ARGV = sys.argv[4:]
lock = threading.Lock()  # one whole frame (or injected chunk) at a time to the monitor
sent: dict[str, int] = {}
procs: list[int] = []


def mode() -> list[str]:
    try:
        with open(CONTROL) as f:
            return f.read().split()
    except OSError:
        return []


def report() -> None:
    tmp = STATUS + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"sent": sent, "procs": procs}, f)
    os.rename(tmp, STATUS)


def garbage() -> bytes:
    noise = os.urandom(16384).replace(b"H", b"h")  # no magic: nothing that looks like a frame
    bad_version = P.HEADER.pack(P.MAGIC, 9, P.MSG, 0, 0)
    not_json = P.HEADER.pack(P.MAGIC, P.PROTOCOL_VERSION, P.MSG, 0, 9) + b"{not json"
    not_object = P.HEADER.pack(P.MAGIC, P.PROTOCOL_VERSION, P.MSG, 0, 5) + b"[1,2]"
    return (noise + bad_version + not_json + not_object) * 4


def events() -> bytes:
    msgs = [
        {"event": P.EV_EXIT, "proc": 987654, "status": 0},
        {"event": "bogus", "x": "y" * 50},
        {"id": 987654321, "ok": False, "error": "e" * 100},
        {"event": P.EV_DNS, "q": 1, "server": "192.0.2.1", "data": "AAAA"},
    ]
    return b"".join(P.encode_msg(m) for m in msgs) * 200


def inject(mon: socket.socket) -> None:
    chunks = {"garbage": garbage(), "events": events()}
    while True:
        words = mode()
        what = words[0] if words else ""
        if what == "oversize" and not sent.get(what):
            with lock:
                mon.sendall(P.HEADER.pack(P.MAGIC, P.PROTOCOL_VERSION, P.MSG, 0, 0xFFFFFFFF))
                mon.sendall(b"x" * 65536)
            sent[what] = 12
            report()
        elif what in ("garbage", "events", "data") and sent.get(what, 0) < int(words[1]):
            if what == "data":
                stream = P.stream_id(int(words[2]), P.STDOUT)
                chunk = b"".join(P.encode_data(stream, b"x" * (4 * P.CHUNK)))
            else:
                chunk = chunks[what]
            with lock:
                mon.sendall(chunk)
            sent[what] = sent.get(what, 0) + len(chunk)
            report()
        else:
            time.sleep(0.05)


def down(ours: socket.socket, mon: socket.socket) -> None:
    """The agent's frames to the monitor, each whole; the processes its replies name."""
    decoder = P.Decoder()
    while data := ours.recv(1 << 16):
        for item in decoder.feed(data):
            if isinstance(item, P.BadFrame):
                continue
            if item.kind == P.MSG:
                msg = item.message()
                if msg.get("ok") and isinstance(msg.get("proc"), int):
                    procs.append(msg["proc"])
                    report()
            with lock:
                mon.sendall(P.encode(item.kind, item.stream, item.payload))


def up(mon: socket.socket, ours: socket.socket) -> None:
    """The monitor's frames to the agent, unless this guest is deaf."""
    while True:
        if mode()[:1] == ["deaf"]:
            time.sleep(0.05)
            continue
        data = mon.recv(1 << 16)
        if not data:
            return
        ours.sendall(data)


def quietly(target, *args) -> None:  # noqa: ANN001
    """``target(*args)`` until either end of the channel goes."""
    with contextlib.suppress(OSError):
        target(*args)


def _die_with_parent() -> None:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def main() -> int:
    mon_fd = -1
    argv = list(ARGV)
    for i, arg in enumerate(argv):
        if arg.startswith("socket,id=agentch,fd="):
            mon_fd = int(arg.rsplit("=", 1)[1])
            ours, theirs = socket.socketpair()
            os.set_inheritable(theirs.fileno(), True)
            argv[i] = f"socket,id=agentch,fd={theirs.fileno()}"
    if mon_fd < 0:
        os.execv(REAL, [REAL, *argv])
    os.set_inheritable(mon_fd, False)  # QEMU gets its own end, not the monitor's
    mon = socket.socket(fileno=mon_fd)
    qemu = subprocess.Popen([REAL, *argv], close_fds=False, preexec_fn=_die_with_parent)
    theirs.close()
    report()
    for target, args in ((down, (ours, mon)), (up, (mon, ours)), (inject, (mon,))):
        threading.Thread(target=quietly, args=(target, *args), daemon=True).start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, _f: qemu.send_signal(s))
    rc = qemu.wait()
    with contextlib.suppress(OSError):
        mon.shutdown(socket.SHUT_RDWR)
    return 128 - rc if rc < 0 else rc


if __name__ == "__main__":
    os._exit(main())
