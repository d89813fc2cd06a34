"""A byte-reproducible newc ("070701") cpio writer, as the kernel's initramfs unpacker reads it.

Entries are written sorted by path with uid/gid 0, mtime 0 and inode numbers given in that
order, so the same inputs always give the same bytes, whatever the build host's clock, umask
or file ownership.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    path: str  # relative, no leading slash: "usr/bin/python3.11"
    mode: int  # full st_mode, type bits included
    data: bytes = b""  # file contents, or the target of a symlink
    rdev: tuple[int, int] = (0, 0)  # (major, minor) for device nodes


def directory(path: str, perm: int = 0o755) -> Entry:
    return Entry(path, stat.S_IFDIR | perm)


def file(path: str, data: bytes, perm: int = 0o644) -> Entry:
    return Entry(path, stat.S_IFREG | perm, data)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, stat.S_IFLNK | 0o777, target.encode())


def chardev(path: str, major: int, minor: int, perm: int = 0o600) -> Entry:
    return Entry(path, stat.S_IFCHR | perm, rdev=(major, minor))


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(ino: int, e: Entry, name: bytes) -> bytes:
    nlink = 2 if stat.S_ISDIR(e.mode) else 1
    fields = (ino, e.mode, 0, 0, nlink, 0, len(e.data), 0, 0, e.rdev[0], e.rdev[1], len(name), 0)
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def write(entries: list[Entry]) -> bytes:
    """The archive for ``entries``; parents must be listed; duplicates are an error."""
    by_path: dict[str, Entry] = {}
    for e in entries:
        p = e.path.strip("/")
        if not p or p in by_path:
            raise ValueError(f"cpio: empty or duplicate path {e.path!r}")
        by_path[p] = Entry(p, e.mode, e.data, e.rdev)
    out = bytearray()
    for ino, p in enumerate(sorted(by_path), 1):
        parent = p.rpartition("/")[0]
        if parent and not stat.S_ISDIR(by_path.get(parent, Entry("", 0)).mode):
            raise ValueError(f"cpio: {p!r} has no parent directory entry {parent!r}")
        e = by_path[p]
        name = p.encode() + b"\0"
        hdr = _header(ino, e, name)
        out += hdr + name + _pad(len(hdr) + len(name)) + e.data + _pad(len(e.data))
    name = TRAILER.encode() + b"\0"
    hdr = _header(0, Entry(TRAILER, 0), name)
    out += hdr + name + _pad(len(hdr) + len(name))
    return bytes(out) + _pad(len(out))


def read(data: bytes) -> list[Entry]:
    """Parse a newc archive (for tests and inspection)."""
    out: list[Entry] = []
    pos = 0
    while True:
        if data[pos : pos + 6] != b"070701":
            raise ValueError(f"cpio: bad magic at offset {pos}")
        f = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = f[11], f[6]
        start = pos + 110
        name = data[start : start + namesize - 1].decode()
        pos = start + namesize
        pos += -pos % 4
        body = data[pos : pos + filesize]
        pos += filesize
        pos += -pos % 4
        if name == TRAILER:
            return out
        out.append(Entry(name, f[1], body, (f[9], f[10])))
