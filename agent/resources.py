"""``linux.resources`` as cgroup v2 file writes: pure, no I/O, imported by the host too
(``hyperpy/preflight.py`` refuses at create what the guest would refuse). Applying them to
a container's cgroup is ``agent/cgroups.py``'s.

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

from agent.errors import SetupError

# Controllers whose files a ``unified`` key may name; of the core ``cgroup.*`` files only
# these: the others (procs, threads, subtree_control, type, freeze, kill) are the agent's.
UNIFIED_CONTROLLERS = ("cpu", "cpuset", "io", "memory", "hugetlb", "pids", "rdma", "misc")
UNIFIED_CORE_FILES = ("cgroup.max.depth", "cgroup.max.descendants", "cgroup.pressure")
DEFAULT_CPU_PERIOD = 100000
THROTTLES = (
    ("throttleReadBpsDevice", "rbps"),
    ("throttleWriteBpsDevice", "wbps"),
    ("throttleReadIOPSDevice", "riops"),
    ("throttleWriteIOPSDevice", "wiops"),
)

Write = tuple[str, str, str]  # (file, value, JSON pointer of the field it comes from)


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
