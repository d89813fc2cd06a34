"""Container state under --root: one directory per id, made once, listed.

Owns the layout of a container's state directory, listing the ids under a root and making
an id exactly once (mkdir is atomic: a raced create has one winner); the record type
(:class:`State`), its reading and writing, the lock, removal and pids are
:mod:`hyperpy.sandbox.record`'s. Deleting renames the directory aside under the lock
before removing it, so a waiter finds it gone.

Layout of ``<root>/<id>/``::

    state.json     the record (record.State)     monitor.sock  the sandbox monitor
    exit.json      init's exit status (monitor)  monitor.log   the monitor's log
    console.log    guest serial console          qemu.log      QEMU's stderr
    share-rw/, shared/, share.json   the 9p export and its record (hyperpy/share.py)
    jail/          QEMU's root, a tmpfs in QEMU's own mount namespace (hyperpy/vm/jail.py)

QEMU gets its QMP and agent channels, its console and its stdout and stderr as socketpair
ends (the monitor writes console.log and qemu.log, each a bounded ring): it can write
nothing in this directory.
"""

from __future__ import annotations

import os

from hyperpy.errors import ContainerExists, UsageError
from hyperpy.sandbox import record
from hyperpy.sandbox.record import (  # noqa: F401 - the store's API, kept where callers import it
    SCHEMA_VERSION,
    State,
    check_id,
    mounts_below,
    pid_alive,
    proc_state,
    read_json,
    write_json_atomic,
)


class Store:
    def __init__(self, root: str) -> None:
        self.root = root

    def dir(self, cid: str) -> str:
        return record.state_dir(self.root, cid)

    def _bad_root(self, exc: OSError) -> UsageError:
        return UsageError(
            f"--root {self.root}: {exc.strerror}: pass a directory hyperpy can create and "
            "write (the default is /run/hyperpy)"
        )

    def ids(self) -> list[str]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise self._bad_root(exc) from None
        return sorted(
            n for n in names if record.valid_id(n) and os.path.isdir(os.path.join(self.root, n))
        )

    def make(self, cid: str) -> str:
        path = self.dir(cid)
        try:
            os.makedirs(self.root, mode=0o711, exist_ok=True)
            os.mkdir(path, 0o700)
        except FileExistsError:
            if not os.path.isdir(self.root):
                raise UsageError(f"--root {self.root} is not a directory") from None
            raise ContainerExists(f"container {cid!r} already exists (under {self.root})") from None
        except OSError as exc:
            raise self._bad_root(exc) from None
        return path

    def load(self, cid: str) -> State:
        return record.load(self.root, cid)

    def save(self, state: State) -> None:
        record.save(self.root, state)

    def remove(self, cid: str) -> None:
        record.remove(self.root, cid)
