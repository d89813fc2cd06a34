"""Container state under --root: one directory per id, state.json written atomically.

Owns the layout of a container's state directory, the schema-versioned state.json (temp
file, fsync, rename), the per-id lock (flock on the directory itself) and making an id
exactly once (mkdir is atomic: a raced create has one winner); the lean primitives
under it (raw record, lock, removal, pids) are :mod:`hyperpy.sandbox.record`'s. Deleting renames the
directory aside under the lock before removing it, so a waiter finds it gone.

Layout of ``<root>/<id>/``::

    state.json     this module's record          monitor.sock  the sandbox monitor
    exit.json      init's exit status (monitor)  monitor.log   the monitor's log
    console.log    guest serial console          qemu.log      QEMU's stderr
    share-rw/, shared/, share.json   the 9p export and its record (hyperpy/share.py)
    jail/          QEMU's root, a tmpfs in QEMU's own mount namespace (hyperpy/vm/jail.py)

QEMU gets its QMP and agent channels as socketpair ends and its console as a file
descriptor: it can write nothing in this directory.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from hyperpy.errors import ContainerExists, UsageError
from hyperpy.sandbox import record
from hyperpy.sandbox.model import Status
from hyperpy.sandbox.record import (  # noqa: F401 - the store's API, kept where callers import it
    check_id,
    mounts_below,
    pid_alive,
    proc_state,
    read_json,
    write_json_atomic,
)

SCHEMA_VERSION = 1


@dataclass
class State:
    id: str
    bundle: str
    rootfs: str
    created: str
    status: str = Status.CREATING.value
    pid: int = 0
    monitor_pid: int = 0
    qemu_pid: int = 0
    # each pid's start time (record.start_time), taken when it is first saved: a pid that
    # another process took after ours died is then "already gone", never signalled
    pid_start: int = 0
    monitor_start: int = 0
    qemu_start: int = 0
    owner: str = ""
    annotations: dict[str, str] = field(default_factory=dict)
    init_proc: int = 0
    terminal: bool = False
    cgroups_path: str = ""
    host_cgroup: str = ""  # below each hierarchy's root; empty: not placed
    hooks: dict = field(default_factory=dict)  # config.json's hooks, for start and delete
    sandbox: str = ""  # the id whose VM this container joined; empty: it owns its VM
    driver: str = "qemu"  # [vm] driver the VM was started with (delete cleans up after it)
    schema: int = SCHEMA_VERSION


PID_STARTS = (("pid", "pid_start"), ("monitor_pid", "monitor_start"), ("qemu_pid", "qemu_start"))


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

    def locked(self, cid: str) -> record.Lock:
        return record.Lock(self.root, cid)

    def load(self, cid: str) -> State:
        raw = record.read(self.root, cid)
        known = {f.name for f in dataclasses.fields(State)}
        return State(**{k: v for k, v in raw.items() if k in known})

    def save(self, state: State) -> None:
        for pid_field, start_field in PID_STARTS:
            pid = getattr(state, pid_field)
            if pid and not getattr(state, start_field):
                setattr(state, start_field, record.start_time(pid))
        write_json_atomic(os.path.join(self.dir(state.id), "state.json"), dataclasses.asdict(state))

    def remove(self, cid: str) -> None:
        record.remove(self.root, cid)
