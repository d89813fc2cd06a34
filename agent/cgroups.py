"""cgroup v2 for containers inside the guest: one cgroup per container, made from the OCI
spec's ``linux.cgroupsPath`` and ``linux.resources``, changed live by ``update``, frozen and
thawed by ``freeze``, read by ``stats``, emptied and removed by ``remove``. What
``linux.resources`` becomes (the files and values, as runc converts them for v2) is
``agent/resources.py``'s.

The agent (PID 1) stays in the root cgroup. cgroup v2's "no internal processes" rule says a
cgroup that hands controllers down to its children (``cgroup.subtree_control``) may hold no
processes itself; the root is exempt, and the cgroups between the root and a container's
(``hyperpy/``, ``kubepods/pod1/``) only ever hold other cgroups. The container's own cgroup
delegates nothing, so its processes may live in it.
"""

from __future__ import annotations

import errno
import os
import signal
import time

from agent.errors import SetupError
from agent.resources import Write, blkio_to_io_weight, translate

ROOT = "/sys/fs/cgroup"
# Enabled in every ancestor's cgroup.subtree_control when the parent offers them.
CONTROLLERS = ("cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc")
MAX_UINT64 = 0xFFFFFFFFFFFFFFFF
CGROUPS_PATH = "/linux/cgroupsPath"


# --- where --------------------------------------------------------------------------------
def cgroup_dir(cid: str, cgroups_path: str, root: str = ROOT) -> str:
    """The container's cgroup directory below ``root``.

    ``cgroupsPath`` is a path ("/kubepods/pod1/ctr" or relative "kubepods/pod1/ctr", both
    below the root; colons are part of a name, as runc's cgroupfs driver takes them); empty
    means hyperpy/<cid>. systemd's "slice:prefix:name" is :func:`systemd_path`'s, which the
    host applies with --systemd-cgroup before the guest sees the path. ".." is resolved as
    runc does (``filepath.Clean("/" + path)``): it cannot climb above the root, so the
    result is always strictly below ``root``.
    """
    rel = cgroups_path or f"hyperpy/{cid}"
    if "\0" in rel:
        raise SetupError(f"cgroupsPath {cgroups_path!r} contains a NUL byte", CGROUPS_PATH)
    rel = os.path.normpath("/" + rel).lstrip("/")
    if not rel or rel == ".":
        raise SetupError(
            f"cgroupsPath {cgroups_path!r} names the root cgroup, which holds the agent; "
            "name a cgroup below it, e.g. /hyperpy/<id>",
            CGROUPS_PATH,
        )
    path = os.path.join(root, rel)
    if os.path.commonpath([root, path]) != os.path.normpath(root):  # cannot happen; belt
        raise SetupError(f"cgroupsPath {cgroups_path!r} escapes {root}", CGROUPS_PATH)
    return path


def systemd_path(spec: str) -> str:
    """systemd's slice:prefix:name as a path: parent.slice/slice.slice/prefix-name.scope, as
    systemd (and runc's systemd driver, and the host's ``hostcgroup.systemd_path``) lay it
    out."""
    parts = spec.split(":")
    if len(parts) != 3:
        raise SetupError(
            f"cgroupsPath {spec!r} is neither a path nor systemd's slice:prefix:name",
            CGROUPS_PATH,
        )
    slice_, prefix, name = parts
    slice_ = slice_ or "system.slice"
    stem = slice_.removesuffix(".slice")
    if not slice_.endswith(".slice") or not stem or "/" in slice_:
        raise SetupError(
            f"cgroupsPath slice {slice_!r} is not a systemd slice name "
            "(it must end in .slice and hold no '/')",
            CGROUPS_PATH,
        )
    if not name or "/" in name or "/" in prefix:
        raise SetupError(
            f"cgroupsPath {spec!r}: the unit name must be non-empty and hold no '/'",
            CGROUPS_PATH,
        )
    dirs: list[str] = []
    if stem != "-":  # "-.slice" is the root slice
        words = stem.split("-")
        if "" in words:  # "a--b.slice", "-a.slice"
            raise SetupError(
                f"cgroupsPath slice {slice_!r} has an empty '-' component", CGROUPS_PATH
            )
        dirs = ["-".join(words[: i + 1]) + ".slice" for i in range(len(words))]
    unit = f"{prefix}-{name}.scope" if prefix else (name if "." in name else f"{name}.scope")
    return "/".join([*dirs, unit])


# --- applying -----------------------------------------------------------------------------
def _write(path: str, value: str) -> None:
    """One write(2) of ``value``: cgroup files parse each write on its own. No O_CREAT, so
    a file the kernel does not offer fails with ENOENT (open(..., "w") gets EACCES from
    kernfs instead)."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _fail(name: str, value: str, pointer: str, exc: OSError) -> SetupError:
    return SetupError(f"cannot write {value} to {name}: {exc.strerror}", pointer)


def _apply_writes(path: str, writes: list[Write]) -> None:
    burst: Write | None = None  # a cpu.max.burst the kernel refused before cpu.max was set
    for i, (name, value, pointer) in enumerate(writes):
        try:
            _write(os.path.join(path, name), value)
        except FileNotFoundError as exc:
            if name == "io.bfq.weight":  # no BFQ: io.weight on its own scale (runc)
                dev, _, w = value.rpartition(" ")
                fallback = f"{dev or 'default'} {blkio_to_io_weight(int(w))}"
                try:
                    _write(os.path.join(path, "io.weight"), fallback)
                except OSError as exc2:
                    raise _fail("io.weight", fallback, pointer, exc2) from exc2
            elif name == "memory.swap.max" and value in ("max", "0"):
                pass  # no swap accounting in this kernel: nothing to lift or forbid (runc)
            else:
                raise _fail(name, value, pointer, exc) from exc
        except OSError as exc:
            later = any(w[0] == "cpu.max" for w in writes[i + 1 :])
            if name == "cpu.max.burst" and exc.errno == errno.EINVAL and later:
                burst = (name, value, pointer)  # above the old quota: retry after cpu.max
                continue
            raise _fail(name, value, pointer, exc) from exc
        if name == "cpu.max" and burst is not None:
            try:
                _write(os.path.join(path, burst[0]), burst[1])
            except OSError as exc:
                raise _fail(*burst, exc) from exc
            burst = None


def enable_controllers(path: str, root: str = ROOT) -> None:
    """Make the controllers reach ``path``: in ``cgroup.subtree_control`` of every cgroup from
    ``root`` down to the parent of ``path``, enable those of CONTROLLERS it offers (its
    ``cgroup.controllers``), as runc does.

    These cgroups must hold no processes (cgroup v2's no-internal-process rule; the root is
    exempt): the kernel then refuses with EBUSY, reported against cgroupsPath. A controller
    refused on its own is skipped; a limit that needs it then fails with its own pointer.
    """
    rel = os.path.relpath(os.path.dirname(path), root)
    if rel.startswith(".."):
        raise SetupError(f"cgroup {path} is not below {root}", CGROUPS_PATH)
    parts = [] if rel == "." else rel.split("/")
    for i in range(len(parts) + 1):
        d = os.path.join(root, *parts[:i])
        offered = _read(d, "cgroup.controllers").split()
        enabled = _read(d, "cgroup.subtree_control").split()
        want = [c for c in CONTROLLERS if c in offered and c not in enabled]
        if not want:
            continue
        control = os.path.join(d, "cgroup.subtree_control")
        try:
            _write(control, " ".join("+" + c for c in want))
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise SetupError(
                    f"cannot enable controllers in {d}: it holds processes, and cgroup v2 lets "
                    "no cgroup with processes delegate controllers; choose a cgroupsPath whose "
                    "parents hold only cgroups",
                    CGROUPS_PATH,
                ) from exc
            for c in want:
                try:
                    _write(control, "+" + c)
                except OSError:
                    pass


def create(cid: str, cgroups_path: str, resources: dict, root: str = ROOT) -> str:
    """Make the container's cgroup (and its parents), delegate the controllers down to it and
    apply ``resources``; returns its directory. On failure nothing made here is left."""
    path = cgroup_dir(cid, cgroups_path, root)
    writes = translate(resources)  # bad values fail before anything is made
    if pids(path):
        raise SetupError(f"cgroup {path} already holds processes", CGROUPS_PATH)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        remove(path, root)
        raise SetupError(f"cannot make cgroup {path}: {exc.strerror}", CGROUPS_PATH) from exc
    try:
        enable_controllers(path, root)
        _apply_writes(path, writes)
    except BaseException:
        remove(path, root)
        raise
    return path


def update(path: str, resources: dict, pointer: str = "/linux/resources") -> None:
    """Apply ``resources`` to an existing cgroup (``hyperpy update``).

    Like ``runc update``, fields not given keep their current values where OCI couples
    them: memory.swap without memory.limit is taken against the current memory.max, and
    cpu.quota without cpu.period (or the reverse) keeps the other half of cpu.max.
    With memory.checkBeforeUpdate a limit below the current usage is refused.
    """
    resources = dict(resources)
    mem = dict(resources.get("memory") or {})
    if mem.get("swap") not in (None, 0, -1) and mem.get("limit") in (None, 0):
        current = _read(path, "memory.max")
        if current == "max" or current.isdigit():
            mem["limit"] = -1 if current == "max" else int(current)
            resources["memory"] = mem
    limit = mem.get("limit")
    if mem.get("checkBeforeUpdate") and isinstance(limit, int) and limit > 0:
        usage = _uint(_read(path, "memory.current"))
        if limit <= usage:
            raise SetupError(
                f"memory.limit {limit} is not above the current usage {usage} "
                "(memory.checkBeforeUpdate)",
                pointer + "/memory/limit",
            )
    cpu = dict(resources.get("cpu") or {})
    if bool(cpu.get("quota")) != bool(cpu.get("period")):
        q, _, per = _read(path, "cpu.max").partition(" ")
        if not cpu.get("period") and per.isdigit():
            cpu["period"] = int(per)
        elif not cpu.get("quota"):
            cpu["quota"] = int(q) if q.isdigit() else -1
        resources["cpu"] = cpu
    _apply_writes(path, translate(resources, pointer))


def freeze(path: str, frozen: bool, timeout: float = 5.0) -> bool:
    """Freeze (or thaw) the cgroup; whether ``cgroup.events`` says so within ``timeout``."""
    want = "1" if frozen else "0"
    with open(os.path.join(path, "cgroup.freeze"), "w") as f:
        f.write(want)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(os.path.join(path, "cgroup.events")) as f:
            if f"frozen {want}" in f.read():
                return True
        time.sleep(0.005)
    return False


# --- reading ------------------------------------------------------------------------------
def _read(path: str, name: str) -> str:
    try:
        with open(os.path.join(path, name)) as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _uint(text: str, default: int = 0) -> int:
    """A cgroup number; "max" is 2^64-1, as runc's GetCgroupParamUint reads it."""
    if text == "max":
        return MAX_UINT64
    return int(text) if text.isdigit() else default


def _keyed(text: str) -> dict[str, int]:
    """A flat keyed file ("key value" lines: cpu.stat, memory.stat, memory.events)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def _psi(path: str, name: str) -> dict | None:
    """A pressure file ("some avg10=0.00 avg60=0.00 avg300=0.00 total=0"), or None."""
    out: dict[str, dict] = {}
    for line in _read(path, name).splitlines():
        kind, *fields = line.split()
        entry: dict[str, float | int] = {}
        for field in fields:
            key, _, value = field.partition("=")
            try:
                entry[key] = int(value) if key == "total" else float(value)
            except ValueError:
                pass
        out[kind] = entry
    return out or None


def pids(path: str) -> list[int]:
    """The processes in the cgroup itself (not in cgroups below it)."""
    return [int(x) for x in _read(path, "cgroup.procs").split() if x.isdigit()]


def oom_kills(path: str) -> int:
    """How many processes the OOM killer has killed in the cgroup (and below it)."""
    return _keyed(_read(path, "memory.events")).get("oom_kill", 0)


def _memory_entry(path: str, prefix: str) -> dict[str, int]:
    usage = _uint(_read(path, prefix + ".current"))
    limit_text = _read(path, prefix + ".max")
    return {
        "limit": _uint(limit_text) if limit_text else (MAX_UINT64 if prefix == "memory" else 0),
        "usage": usage,
        "max": _uint(_read(path, prefix + ".peak")),
        "failcnt": _keyed(_read(path, prefix + ".events")).get("max", 0),
    }


def stats(path: str) -> dict:
    """Numbers read from the container's cgroup, shaped as runc's ``events --stats`` data
    (runc's types.Stats JSON). Files that are missing (a controller not enabled, a kernel
    without it) read as zeros; nothing here raises.

    cpu: cpu.stat's usec counters in nanoseconds. memory: memory.current/max/peak, failcnt is
    memory.events' "max" count, cache is memory.stat's "file", raw all of memory.stat; swap
    is reported as memory + swap with the limit memory.max + memory.swap.max (runc, for v1
    compatibility); kernel and kernelTCP usage are memory.stat's "kernel" and "sock". pids:
    limit 0 means no limit (runc). blkio: io.stat's bytes and ios as v1's recursive tables.
    """
    cpu = _keyed(_read(path, "cpu.stat"))
    raw = _keyed(_read(path, "memory.stat"))
    memory = _memory_entry(path, "memory")
    swap = _memory_entry(path, "memory.swap")
    swap["usage"] += memory["usage"]
    if swap["limit"] != MAX_UINT64:
        swap["limit"] = min(MAX_UINT64, swap["limit"] + memory["limit"])
    swap["max"] = 0
    bytes_: list[dict] = []
    ios: list[dict] = []
    for line in _read(path, "io.stat").splitlines():
        dev, *fields = line.split()
        major, _, minor = dev.partition(":")
        if not (major.isdigit() and minor.isdigit()):
            continue
        for field in fields:
            key, _, value = field.partition("=")
            table = {"rbytes": bytes_, "wbytes": bytes_, "rios": ios, "wios": ios}.get(key)
            if table is not None and value.isdigit():
                op = "Read" if key[0] == "r" else "Write"
                table.append(
                    {"major": int(major), "minor": int(minor), "op": op, "value": int(value)}
                )
    hugetlb = {}
    try:
        names = os.listdir(path)
    except OSError:
        names = []
    for name in sorted(names):
        if name.startswith("hugetlb.") and name.endswith(".current") and ".rsvd." not in name:
            size = name[len("hugetlb.") : -len(".current")]
            hugetlb[size] = {
                "usage": _uint(_read(path, name)),
                "max": 0,  # v2 keeps no peak
                "failcnt": _keyed(_read(path, f"hugetlb.{size}.events")).get("max", 0),
            }
    pids_max = _uint(_read(path, "pids.max"))
    out: dict = {
        "cpu": {
            "usage": {
                "total": cpu.get("usage_usec", 0) * 1000,
                "kernel": cpu.get("system_usec", 0) * 1000,
                "user": cpu.get("user_usec", 0) * 1000,
            },
            "throttling": {
                "periods": cpu.get("nr_periods", 0),
                "throttledPeriods": cpu.get("nr_throttled", 0),
                "throttledTime": cpu.get("throttled_usec", 0) * 1000,
            },
        },
        "memory": {
            "cache": raw.get("file", 0),
            "usage": memory,
            "swap": swap,
            "kernel": {"limit": 0, "usage": raw.get("kernel", 0), "max": 0, "failcnt": 0},
            "kernelTCP": {"limit": 0, "usage": raw.get("sock", 0), "max": 0, "failcnt": 0},
            "raw": raw,
        },
        "pids": {
            "current": _uint(_read(path, "pids.current")),
            "limit": 0 if pids_max == MAX_UINT64 else pids_max,
        },
        "blkio": {"ioServiceBytesRecursive": bytes_, "ioServicedRecursive": ios},
        "hugetlb": hugetlb,
    }
    for section, name in (
        ("cpu", "cpu.pressure"),
        ("memory", "memory.pressure"),
        ("blkio", "io.pressure"),
    ):
        psi = _psi(path, name)
        if psi:
            out[section]["psi"] = psi
    return out


# --- removing -----------------------------------------------------------------------------
def _subtree(path: str) -> list[str]:
    """``path`` and every cgroup below it, deepest first."""
    out = []
    for top, dirs, _ in os.walk(path, topdown=False):
        out += [os.path.join(top, d) for d in dirs]
    return [*out, path]


def _kill_all(path: str) -> None:
    try:
        _write(os.path.join(path, "cgroup.kill"), "1")  # the whole subtree, forks included
        return
    except OSError:
        pass  # before Linux 5.14: signal each process, again each round, to catch forks
    for d in _subtree(path):
        for pid in pids(d):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def remove(path: str, root: str = ROOT, timeout: float = 2.0) -> bool:
    """Kill whatever is left in the cgroup, remove it (and cgroups made below it), then the
    parents that are now empty, up to but not including ``root``.

    A cgroup can be removed once its processes have exited (unreaped zombies do not count).
    Waits up to ``timeout`` seconds for that; returns False if it is still there then.
    """
    deadline = time.monotonic() + timeout
    while os.path.isdir(path):
        _kill_all(path)
        try:
            for d in _subtree(path):
                os.rmdir(d)
        except FileNotFoundError:
            continue
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
    parent = os.path.dirname(path)
    stop = os.path.normpath(root)
    while parent.startswith(stop + "/"):
        try:
            os.rmdir(parent)  # fails while other containers' cgroups are below it
        except OSError:
            break
        parent = os.path.dirname(parent)
    return True
