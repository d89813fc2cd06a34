"""cgroup v2 for containers inside the guest: one cgroup per container, from the OCI spec's
``linux.resources`` and ``linux.cgroupsPath``, changed live by ``update``, read by ``stats``.

The conversions follow runc and crun on cgroup v2: cpu shares become a weight
(1 + (shares - 2) * 9999 / 262142), OCI's memory.swap (memory plus swap) becomes
memory.swap.max = swap - limit, -1 means "max", and the ``unified`` map is written last,
verbatim, so it wins.  memory.disableOOMKiller has no v2 equivalent and is ignored, as in
runc.
"""

from __future__ import annotations

import os
import signal
import time

from agent.errors import SetupError

ROOT = "/sys/fs/cgroup"
CONTROLLERS = ("cpuset", "cpu", "io", "memory", "pids", "hugetlb")
UNIFIED_PREFIXES = ("cgroup.", "cpu.", "cpuset.", "io.", "memory.", "pids.", "hugetlb.", "misc.")
MAX_UINT64 = 0xFFFFFFFFFFFFFFFF


def cgroup_dir(cid: str, cgroups_path: str, root: str = ROOT) -> str:
    """The container's cgroup: cgroupsPath (a path, or systemd's slice:prefix:name), else
    hyperpy/<cid>; always below ``root``."""
    path = cgroups_path or f"hyperpy/{cid}"
    parts = path.split(":")
    if len(parts) == 3 and "/" not in path:
        slice_, prefix, name = parts
        stem = (slice_ or "system.slice").removesuffix(".slice")
        words = [] if stem == "-" else stem.split("-")
        dirs = ["-".join(words[: i + 1]) + ".slice" for i in range(len(words))]
        path = "/".join([*dirs, f"{prefix}-{name}.scope" if prefix else f"{name}.scope"])
    rel = os.path.normpath("/" + path).lstrip("/")
    if not rel:
        raise SetupError(
            f"cgroupsPath {cgroups_path!r} names the root cgroup", "/linux/cgroupsPath"
        )
    return os.path.join(root, rel)


def _max(value: int) -> str:
    return "max" if value < 0 else str(value)


def translate(resources: dict, pointer: str = "/linux/resources") -> list[tuple[str, str, str]]:
    """Ordered (file, value, JSON pointer) writes for ``resources``."""
    out: list[tuple[str, str, str]] = []
    mem = resources.get("memory") or {}
    mp = pointer + "/memory"
    if mem.get("reservation") is not None:
        out.append(("memory.low", _max(mem["reservation"]), mp + "/reservation"))
    limit = mem.get("limit")
    if limit is not None and limit != 0:
        out.append(("memory.max", _max(limit), mp + "/limit"))
    swap = mem.get("swap")
    if swap is not None and swap != 0:
        if swap < 0:
            out.append(("memory.swap.max", "max", mp + "/swap"))
        elif limit is None or limit < 0:
            raise SetupError("memory.swap is set but memory.limit is not", mp + "/swap")
        elif swap < limit:
            raise SetupError(
                f"memory.swap ({swap}) is memory+swap and must be >= memory.limit ({limit})",
                mp + "/swap",
            )
        else:
            out.append(("memory.swap.max", str(swap - limit), mp + "/swap"))
    cpu = resources.get("cpu") or {}
    cp = pointer + "/cpu"
    if cpu.get("shares"):
        shares = max(2, min(262144, int(cpu["shares"])))
        out.append(("cpu.weight", str(1 + ((shares - 2) * 9999) // 262142), cp + "/shares"))
    if cpu.get("quota") is not None or cpu.get("period") is not None:
        quota = cpu.get("quota")
        period = cpu.get("period") or 100000
        q = "max" if quota is None or quota <= 0 else str(quota)
        out.append(("cpu.max", f"{q} {period}", cp + "/quota"))
    if cpu.get("burst") is not None:
        out.append(("cpu.max.burst", str(cpu["burst"]), cp + "/burst"))
    if cpu.get("idle") is not None:
        out.append(("cpu.idle", str(cpu["idle"]), cp + "/idle"))
    if cpu.get("cpus"):
        out.append(("cpuset.cpus", cpu["cpus"], cp + "/cpus"))
    if cpu.get("mems"):
        out.append(("cpuset.mems", cpu["mems"], cp + "/mems"))
    pids = resources.get("pids") or {}
    if pids.get("limit") is not None:
        out.append(("pids.max", _max(pids["limit"]) if pids["limit"] > 0 else "max",
                    pointer + "/pids/limit"))  # fmt: skip
    blk = resources.get("blockIO") or {}
    bp = pointer + "/blockIO"
    if blk.get("weight"):
        # io.weight is 1..10000 where blkio weight was 10..1000 (runc's conversion).
        w = 1 + (int(blk["weight"]) - 10) * 9999 // 990
        out.append(("io.weight", f"default {max(1, min(10000, w))}", bp + "/weight"))
    throttles = (
        ("throttleReadBpsDevice", "rbps"),
        ("throttleWriteBpsDevice", "wbps"),
        ("throttleReadIOPSDevice", "riops"),
        ("throttleWriteIOPSDevice", "wiops"),
    )
    for key, field in throttles:
        for i, dev in enumerate(blk.get(key) or []):
            line = f"{dev['major']}:{dev['minor']} {field}={dev['rate']}"
            out.append(("io.max", line, f"{bp}/{key}/{i}"))
    for i, hp in enumerate(resources.get("hugepageLimits") or []):
        out.append((f"hugetlb.{hp['pageSize']}.max", str(hp["limit"]),
                    f"{pointer}/hugepageLimits/{i}"))  # fmt: skip
    for key, value in sorted((resources.get("unified") or {}).items()):
        kp = f"{pointer}/unified/{key.replace('~', '~0').replace('/', '~1')}"
        if "/" in key or key.startswith(".") or not key.startswith(UNIFIED_PREFIXES):
            raise SetupError(f"unified key {key!r} is not a cgroup v2 interface file", kp)
        out.append((key, str(value), kp))
    return out


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _apply(path: str, resources: dict) -> None:
    for name, value, pointer in translate(resources):
        try:
            _write(os.path.join(path, name), value)
        except OSError as exc:
            raise SetupError(f"cannot write {value!r} to {name}: {exc.strerror}", pointer) from exc


def enable_controllers(path: str, root: str = ROOT) -> None:
    """Delegate the controllers down every ancestor of ``path`` (the root cgroup holds only
    the agent, which cgroup v2's no-internal-process rule exempts)."""
    rel = os.path.relpath(os.path.dirname(path), root)
    parts = [] if rel == "." else rel.split("/")
    for i in range(len(parts) + 1):
        d = os.path.join(root, *parts[:i])
        try:
            with open(os.path.join(d, "cgroup.controllers")) as f:
                have = set(f.read().split())
        except OSError:
            continue
        want = " ".join(f"+{c}" for c in CONTROLLERS if c in have)
        if want:
            _write(os.path.join(d, "cgroup.subtree_control"), want)


def create(cid: str, cgroups_path: str, resources: dict, root: str = ROOT) -> str:
    path = cgroup_dir(cid, cgroups_path, root)
    if os.path.exists(os.path.join(path, "cgroup.procs")):
        with open(os.path.join(path, "cgroup.procs")) as f:
            if f.read().strip():
                raise SetupError(f"cgroup {path} already has processes", "/linux/cgroupsPath")
    os.makedirs(path, exist_ok=True)
    try:
        enable_controllers(path, root)
        _apply(path, resources)
    except BaseException:
        remove(path, root)
        raise
    return path


def update(path: str, resources: dict) -> None:
    _apply(path, resources)


def pids(path: str) -> list[int]:
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _read(path: str, name: str) -> str:
    try:
        with open(os.path.join(path, name)) as f:
            return f.read().strip()
    except OSError:
        return ""


def _keyed(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        if v.strip().isdigit():
            out[k] = int(v)
    return out


def _num(text: str, default: int = 0) -> int:
    return MAX_UINT64 if text == "max" else int(text) if text.isdigit() else default


def oom_kills(path: str) -> int:
    return _keyed(_read(path, "memory.events")).get("oom_kill", 0)


def stats(path: str) -> dict:
    """Numbers from the container's cgroup, shaped as runc's ``events --stats`` data."""
    cpu = _keyed(_read(path, "cpu.stat"))
    mem = _keyed(_read(path, "memory.stat"))
    events = _keyed(_read(path, "memory.events"))
    io_entries = []
    for line in _read(path, "io.stat").splitlines():
        words = line.split()
        if not words:
            continue
        major, _, minor = words[0].partition(":")
        for kv in words[1:]:
            k, _, v = kv.partition("=")
            op = {"rbytes": "Read", "wbytes": "Write", "rios": "Read", "wios": "Write"}.get(k)
            if op and v.isdigit():
                io_entries.append({"major": int(major), "minor": int(minor), "op": op,
                                   "value": int(v), "kind": k})  # fmt: skip
    return {
        "cpu": {
            "usage": {
                "total": cpu.get("usage_usec", 0) * 1000,
                "user": cpu.get("user_usec", 0) * 1000,
                "kernel": cpu.get("system_usec", 0) * 1000,
            },
            "throttling": {
                "periods": cpu.get("nr_periods", 0),
                "throttled_periods": cpu.get("nr_throttled", 0),
                "throttled_time": cpu.get("throttled_usec", 0) * 1000,
            },
        },
        "memory": {
            "cache": mem.get("file", 0),
            "usage": {
                "usage": _num(_read(path, "memory.current")),
                "limit": _num(_read(path, "memory.max"), MAX_UINT64),
                "max": _num(_read(path, "memory.peak")),
                "failcnt": events.get("max", 0),
            },
            "swap": {
                "usage": _num(_read(path, "memory.swap.current")),
                "limit": _num(_read(path, "memory.swap.max"), MAX_UINT64),
            },
            "raw": mem,
        },
        "pids": {
            "current": _num(_read(path, "pids.current")),
            "limit": _num(_read(path, "pids.max"), 0),
        },
        "blkio": {
            "ioServiceBytesRecursive": [
                {k: e[k] for k in ("major", "minor", "op", "value")}
                for e in io_entries
                if e["kind"] in ("rbytes", "wbytes")
            ],
            "ioServicedRecursive": [
                {k: e[k] for k in ("major", "minor", "op", "value")}
                for e in io_entries
                if e["kind"] in ("rios", "wios")
            ],
        },
    }


def remove(path: str, root: str = ROOT, timeout: float = 2.0) -> None:
    """Kill what is left in the cgroup, rmdir it and the empty ancestors below ``root``."""
    if not os.path.isdir(path):
        return
    try:
        _write(os.path.join(path, "cgroup.kill"), "1")
    except OSError:
        for pid in pids(path):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(path)
            break
        except FileNotFoundError:
            break
        except OSError:
            if time.monotonic() > deadline:
                return  # still busy: a zombie not yet reaped; left for the VM's end
            time.sleep(0.01)
    parent = os.path.dirname(path)
    while parent.startswith(root + "/"):
        try:
            os.rmdir(parent)
        except OSError:
            break
        parent = os.path.dirname(parent)
