"""The sync pipe a container's setup child reports on, and what the agent reads from it.

The child writes one JSON line: ``{"ok": true}`` once it is ready (blocked on the start
gate), or ``{"error": ..., "pointer": ...}`` naming the config.json field that failed; the
pipe is close-on-exec, so end-of-file with nothing written means the exec happened.
"""

from __future__ import annotations

import contextlib
import json
import os


def read(fd: int) -> dict:
    """Read one JSON status line from a sync pipe; EOF with no data means exec happened."""
    raw = b""
    while not raw.endswith(b"\n"):
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        raw += chunk
    if not raw:
        return {"exec": True}
    return json.loads(raw)


def read_all(fd: int) -> bytes:
    out = b""
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            return out
        out += chunk


def report(fd: int, obj: dict) -> None:
    os.write(fd, json.dumps(obj).encode() + b"\n")


def report_failure(sync_w: int, error: str, pointer: str, started: bool) -> None:
    """After the start gate nobody waits for the sync pipe: say it on the process's stderr
    too, as runc's init does for a failed exec."""
    if started:
        with contextlib.suppress(OSError):
            os.write(2, f"hyperpy: {error}\n".encode())
    with contextlib.suppress(OSError):
        report(sync_w, {"error": error, "pointer": pointer})
