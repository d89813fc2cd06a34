"""Reading the JSON documents a caller names: config.json, exec's --process, update's --resources.

Owns the limits on what is read, so that no input can hang, exhaust or crash the CLI: only a
regular file (a FIFO would block the read forever, ``/dev/zero`` never ends; the type is
checked before the file is opened, and opened non-blocking), at most :data:`MAX_BYTES`,
UTF-8, strict JSON (no NaN or Infinity) nested at most :data:`MAX_DEPTH` levels (Python's
parser recurses, so a deeper document would end in a RecursionError). A
:class:`DocumentError` says what is wrong in words meant for the user; the caller adds which
file or flag it was and turns it into its own error (SpecError for config.json, UsageError
for a flag's file).
"""

from __future__ import annotations

import json
import os
import stat
from typing import IO, Any, NoReturn

# Far above any real document (an OCI spec is a few KiB); config.json must also fit in one
# message to the guest (agent.protocol.MAX_PAYLOAD, 1 MiB), which create checks later.
MAX_BYTES = 4 << 20
# An OCI spec nests fewer than 10 levels; 64 keeps every later walk (jsonschema, json.dumps)
# far from Python's recursion limit.
MAX_DEPTH = 64

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class DocumentError(ValueError):
    """The document cannot be used; the message says why and how to fix it, ``pointer``
    (RFC 6901) where, when it is known."""

    def __init__(self, message: str, pointer: str = "") -> None:
        super().__init__(message)
        self.pointer = pointer


def _not_regular(mode: int) -> str:
    kind = next((name for test, name in _KINDS if test(mode)), "a special file")
    return f"cannot read it: it is {kind}, not a regular file; point to a regular JSON file"


def read(path: str) -> bytes:
    """The bytes of the regular file at ``path`` (symlinks followed, as runc does)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise DocumentError(f"cannot read it: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise DocumentError(_not_regular(st.st_mode))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise DocumentError(f"cannot read it: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):  # swapped since the stat above
            raise DocumentError(_not_regular(st.st_mode))
        return _read_limited(f)


def read_stream(stream: IO[bytes]) -> bytes:
    """A document from a pipe or terminal (``-`` for stdin), with the same size limit."""
    return _read_limited(stream)


def _read_limited(f: IO[bytes]) -> bytes:
    data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise DocumentError(
            f"it is larger than {MAX_BYTES >> 20} MiB, the most hyperpy reads: a JSON "
            "document for a container is a few KiB; check that this is the right file"
        )
    return data


def parse(raw: bytes) -> Any:
    """Strict JSON from UTF-8 bytes, nested at most MAX_DEPTH levels."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DocumentError(
            f"not UTF-8 text (invalid byte at offset {exc.start}); save it as UTF-8"
        ) from exc
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise DocumentError(
            f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}; fix the "
            "syntax (`python3 -m json.tool FILE` shows the spot)"
        ) from exc
    except RecursionError:
        line, col = _too_deep_at(text)
        raise DocumentError(_too_deep(f" at line {line} column {col}")) from None
    except ValueError as exc:
        raise DocumentError(f"invalid JSON: {exc}") from exc
    where = _deeper_than(value, MAX_DEPTH)
    if where is not None:
        raise DocumentError(_too_deep(""), where)
    return value


def load(path: str) -> Any:
    return parse(read(path))


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON value; write a number or a string instead")


def _too_deep(where: str) -> str:
    return (
        f"nested more than {MAX_DEPTH} levels deep{where}; hyperpy reads documents nested "
        f"at most {MAX_DEPTH} levels (an OCI config needs fewer than 10): remove or "
        "flatten that value"
    )


def _deeper_than(value: Any, limit: int) -> str | None:
    """The JSON pointer of the first value nested deeper than ``limit``, or None.

    Iterative: the point is to measure documents too deep to recurse over."""
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        item, depth, ptr = stack.pop()
        if isinstance(item, dict):
            children = [(k.replace("~", "~0").replace("/", "~1"), v) for k, v in item.items()]
        elif isinstance(item, list):
            children = [(str(i), v) for i, v in enumerate(item)]
        else:
            continue
        if depth > limit:
            return ptr
        stack.extend((v, depth + 1, f"{ptr}/{k}") for k, v in children)
    return None


def _too_deep_at(text: str) -> tuple[int, int]:
    """Line and column where brackets outside strings first nest deeper than MAX_DEPTH."""
    depth, in_string, escaped, line, col = 0, False, False, 1, 0
    for ch in text:
        col += 1
        if ch == "\n":
            line, col = line + 1, 0
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return line, col
        elif ch in "]}":
            depth -= 1
    return line, col
