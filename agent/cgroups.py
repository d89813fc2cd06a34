"""cgroup v2 for containers inside the guest: one cgroup per container, made from the OCI
spec's ``linux.cgroupsPath`` and ``linux.resources``, changed live by ``update``, read by
``stats``, emptied and removed by ``remove``.

The agent (PID 1) stays in the root cgroup. cgroup v2's "no internal processes" rule says a
cgroup that hands controllers down to its children (``cgroup.subtree_control``) may hold no
processes itself; the root is exempt, and the cgroups between the root and a container's
(``hyperpy/``, ``kubepods/pod1/``) only ever hold other cgroups. The container's own cgroup
delegates nothing, so its processes may live in it.

The OCI resources were designed for cgroup v1; they are converted the way runc does on v2:

=======================================  ===============================================
``memory.limit``                         ``memory.max`` (-1: ``max``; 0: not set)
``memory.reservation``                   ``memory.low`` (same rules)
``memory.swap`` (memory + swap)          ``memory.swap.max`` = swap - limit; -1: ``max``;
                                         0: not set; swap == limit: ``0`` (no swap);
                                         limit -1 and no swap: ``max``; swap < limit and
                                         swap without a limit are errors
``memory.checkBeforeUpdate``             ``update`` refuses a limit below memory.current
``memory.kernel``, ``kernelTCP``,        no cgroup v2 equivalent: ignored, as by runc (v2
``swappiness``, ``disableOOMKiller``,    has no OOM-killer switch; ``memory.oom.group``
``useHierarchy``                         can be set through ``unified``)
``cpu.idle``                             ``cpu.idle`` (written first: an idle group has no
                                         weight, so ``shares`` is skipped when idle is 1)
``cpu.shares``                           ``cpu.weight`` = 1 + (shares - 2) * 9999 // 262142,
                                         shares clamped to the v1 range 2..262144 (runc's
                                         long-standing formula: 1024 gives 39; in 2025 runc
                                         and crun moved to a log-quadratic mapping that
                                         gives 100, v2's default)
``cpu.quota``, ``cpu.period``            ``cpu.max`` "quota period" ("max" for quota <= 0,
                                         period 100000 when unset)
``cpu.burst``                            ``cpu.max.burst`` (written before ``cpu.max`` and
                                         again after it if the kernel refused it first, as
                                         runc does: burst may not exceed the quota)
``cpu.cpus``, ``cpu.mems``               ``cpuset.cpus``, ``cpuset.mems``
``cpu.realtime*``                        an error: cgroup v2 has no real-time group
                                         scheduling
``pids.limit``                           ``pids.max`` ("max" for <= 0)
``blockIO.weight``, ``weightDevice``     ``io.bfq.weight`` (BFQ's 1..1000 scale, "W" or
                                         "MAJ:MIN W"); when BFQ is absent (ENOENT) the write
                                         falls back to ``io.weight`` "default W'" or
                                         "MAJ:MIN W'" with W' = 1 + (W - 10) * 9999 // 990
                                         (runc's fallback); ``leafWeight`` has no v2 form
``blockIO.throttle*Device``              ``io.max`` "MAJ:MIN rbps|wbps|riops|wiops=N", one
                                         write per device (rate 0: ``max``, no limit)
``hugepageLimits``                       ``hugetlb.<pageSize>.max``
``rdma``                                 ``rdma.max`` "dev hca_handle=N hca_object=N"
``unified``                              the file named by the key, verbatim, last
=======================================  ===============================================

Not applied here: ``linux.resources.devices`` (on cgroup v2 an eBPF program, not a file;
the container gets only the device nodes its spec lists, see ``container.py``) and
``network`` (cgroup v1 only).
"""

from __future__ import annotations

import errno
import os
import signal
import time

from agent.errors import SetupError

ROOT = "/sys/fs/cgroup"
# Enabled in every ancestor's cgroup.subtree_control when the parent offers them.
CONTROLLERS = ("cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc")
# Controllers whose files a ``unified`` key may name; of the core ``cgroup.*`` files only
# these: the others (procs, threads, subtree_control, type, freeze, kill) are the agent's.
UNIFIED_CONTROLLERS = ("cpu", "cpuset", "io", "memory", "hugetlb", "pids", "rdma", "misc")
UNIFIED_CORE_FILES = ("cgroup.max.depth", "cgroup.max.descendants", "cgroup.pressure")
MAX_UINT64 = 0xFFFFFFFFFFFFFFFF
DEFAULT_CPU_PERIOD = 100000
THROTTLES = (
    ("throttleReadBpsDevice", "rbps"),
    ("throttleWriteBpsDevice", "wbps"),
    ("throttleReadIOPSDevice", "riops"),
    ("throttleWriteIOPSDevice", "wiops"),
)
CGROUPS_PATH = "/linux/cgroupsPath"

Write = tuple[str, str, str]  # (file, value, JSON pointer of the field it comes from)


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


# --- what ---------------------------------------------------------------------------------
def _escape(key: str) -> str:
    """A JSON pointer reference token (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


def _int(value: object, pointer: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SetupError(f"expected an integer, found {value!r}", pointer)
    return value


def _str(value: object, pointer: str) -> str:
    if not isinstance(value, str):
        raise SetupError(f"expected a string, found {value!r}", pointer)
    return value


def _bytes_limit(value: object, pointer: str) -> str:
    """A memory limit: -1 is "max", 0 is unset (""), other negatives are errors."""
    n = _int(value, pointer)
    if n < -1:
        raise SetupError(f"{n} is neither -1 (unlimited) nor a number of bytes", pointer)
    return "max" if n == -1 else "" if n == 0 else str(n)


def _memory(mem: dict, p: str) -> list[Write]:
    out: list[Write] = []
    limit = _int(mem["limit"], p + "/limit") if mem.get("limit") is not None else 0
    swap = _int(mem["swap"], p + "/swap") if mem.get("swap") is not None else 0
    limit_s = _bytes_limit(limit, p + "/limit")
    if swap < -1:
        raise SetupError(f"{swap} is neither -1 (unlimited) nor a number of bytes", p + "/swap")
    # runc's ConvertMemorySwapToCgroupV2Value: OCI's swap is memory + swap, v2's is swap only.
    if limit == -1 and swap == 0:
        out.append(("memory.swap.max", "max", p + "/limit"))
    elif swap == -1:
        out.append(("memory.swap.max", "max", p + "/swap"))
    elif swap > 0:
        if limit == -1:  # unlimited memory: the swap figure is taken as is
            out.append(("memory.swap.max", str(swap), p + "/swap"))
        elif limit == 0:
            raise SetupError(
                "memory.swap (memory + swap) cannot be set without memory.limit", p + "/swap"
            )
        elif swap < limit:
            raise SetupError(
                f"memory.swap ({swap}) is memory + swap and must be at least "
                f"memory.limit ({limit})",
                p + "/swap",
            )
        else:  # swap == limit writes 0: no swap at all
            out.append(("memory.swap.max", str(swap - limit), p + "/swap"))
    if limit_s:
        out.append(("memory.max", limit_s, p + "/limit"))
    if mem.get("reservation") is not None:
        low = _bytes_limit(mem["reservation"], p + "/reservation")
        if low:
            out.append(("memory.low", low, p + "/reservation"))
    return out


def shares_to_weight(shares: int) -> int:
    """cgroup v1 cpu.shares (2..262144, clamped) → v2 cpu.weight (1..10000), runc's formula."""
    shares = max(2, min(262144, shares))
    return 1 + ((shares - 2) * 9999) // 262142


def blkio_to_io_weight(weight: int) -> int:
    """blkio weight (10..1000) → io.weight (1..10000), runc's ConvertBlkIOToIOWeightValue."""
    return max(1, min(10000, 1 + (weight - 10) * 9999 // 990))


def _cpu(cpu: dict, p: str) -> list[Write]:
    out: list[Write] = []
    for key in ("realtimeRuntime", "realtimePeriod"):
        if cpu.get(key):
            raise SetupError(
                f"cpu.{key}: cgroup v2 has no real-time group scheduling; "
                "remove it from config.json",
                f"{p}/{key}",
            )
    idle = None
    if cpu.get("idle") is not None:
        idle = _int(cpu["idle"], p + "/idle")
        out.append(("cpu.idle", str(idle), p + "/idle"))
    if cpu.get("shares") and idle != 1:
        shares = _int(cpu["shares"], p + "/shares")
        out.append(("cpu.weight", str(shares_to_weight(shares)), p + "/shares"))
    if cpu.get("burst") is not None:
        burst = _int(cpu["burst"], p + "/burst")
        out.append(("cpu.max.burst", str(burst), p + "/burst"))
    quota = _int(cpu["quota"], p + "/quota") if cpu.get("quota") is not None else 0
    period = _int(cpu["period"], p + "/period") if cpu.get("period") is not None else 0
    if quota or period:
        q = str(quota) if quota > 0 else "max"
        out.append(
            (
                "cpu.max",
                f"{q} {period or DEFAULT_CPU_PERIOD}",
                p + ("/quota" if quota else "/period"),
            )
        )
    for key in ("cpus", "mems"):
        if cpu.get(key):
            out.append((f"cpuset.{key}", _str(cpu[key], f"{p}/{key}"), f"{p}/{key}"))
    return out


def _device(dev: dict, p: str) -> str:
    return f"{_int(dev.get('major'), p + '/major')}:{_int(dev.get('minor'), p + '/minor')}"


def _block_io(blk: dict, p: str) -> list[Write]:
    out: list[Write] = []
    if blk.get("weight"):
        out.append(("io.bfq.weight", str(_int(blk["weight"], p + "/weight")), p + "/weight"))
    for i, dev in enumerate(blk.get("weightDevice") or []):
        dp = f"{p}/weightDevice/{i}"
        if dev.get("weight"):
            weight = _int(dev["weight"], dp + "/weight")
            out.append(("io.bfq.weight", f"{_device(dev, dp)} {weight}", dp + "/weight"))
    for key, field in THROTTLES:
        for i, dev in enumerate(blk.get(key) or []):
            dp = f"{p}/{key}/{i}"
            rate = _int(dev.get("rate"), dp + "/rate")
            out.append(("io.max", f"{_device(dev, dp)} {field}={rate or 'max'}", dp))
    return out


def _unified(unified: dict, p: str) -> list[Write]:
    out: list[Write] = []
    for key, value in unified.items():
        kp = f"{p}/{_escape(key)}"
        controller, dot, rest = key.partition(".")
        if not dot or not controller or not rest or "/" in key or ".." in key or "\0" in key:
            raise SetupError(
                f"unified key {key!r} is not a cgroup v2 interface file name such as memory.high",
                kp,
            )
        if controller == "cgroup":
            if key not in UNIFIED_CORE_FILES:
                raise SetupError(
                    f"unified key {key!r}: only {', '.join(UNIFIED_CORE_FILES)} of the "
                    "cgroup.* files may be set; the rest are the runtime's",
                    kp,
                )
        elif controller not in UNIFIED_CONTROLLERS:
            raise SetupError(
                f"unified key {key!r} names no known cgroup v2 controller "
                f"({', '.join(UNIFIED_CONTROLLERS)})",
                kp,
            )
        out.append((key, value if isinstance(value, str) else str(value), kp))
    return out


def translate(resources: dict, pointer: str = "/linux/resources") -> list[Write]:
    """The ordered (file, value, JSON pointer) writes that apply ``resources``.

    Pure: reads nothing, writes nothing; raises SetupError naming the field for values that
    cannot be converted. ``unified`` comes last, so its files override the converted ones.
    """
    out: list[Write] = []
    if resources.get("memory"):
        out += _memory(resources["memory"], pointer + "/memory")
    if resources.get("cpu"):
        out += _cpu(resources["cpu"], pointer + "/cpu")
    pids = resources.get("pids") or {}
    if pids.get("limit") is not None:
        n = _int(pids["limit"], pointer + "/pids/limit")
        out.append(("pids.max", str(n) if n > 0 else "max", pointer + "/pids/limit"))
    if resources.get("blockIO"):
        out += _block_io(resources["blockIO"], pointer + "/blockIO")
    for i, hp in enumerate(resources.get("hugepageLimits") or []):
        hpp = f"{pointer}/hugepageLimits/{i}"
        size = _str(hp.get("pageSize"), hpp + "/pageSize")
        if not size or "/" in size or "." in size or " " in size:
            raise SetupError(f"{size!r} is not a huge page size such as 2MB", hpp + "/pageSize")
        out.append((f"hugetlb.{size}.max", str(_int(hp.get("limit"), hpp + "/limit")), hpp))
    for dev, limits in (resources.get("rdma") or {}).items():
        rp = f"{pointer}/rdma/{_escape(dev)}"
        if not dev or any(c in dev for c in " \t\n/"):
            raise SetupError(f"{dev!r} is not an RDMA device name", rp)
        fields = []
        for key, field in (("hcaHandles", "hca_handle"), ("hcaObjects", "hca_object")):
            n = limits.get(key)
            fields.append(f"{field}={'max' if n is None else _int(n, f'{rp}/{key}')}")
        out.append(("rdma.max", f"{dev} {' '.join(fields)}", rp))
    if resources.get("unified"):
        out += _unified(resources["unified"], pointer + "/unified")
    return out


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
