"""Command-line flags to values and spec fragments, as runc reads them: pure, no I/O.

Signals (``kill``), sizes and durations, ``update``'s resource flags to a LinuxResources
fragment, and the refusal of ``--preserve-fds``; each raises :class:`UsageError` naming
the flag. Table-tested in tests/unit/test_flags.py. Lean: ``kill`` is a hot verb.
"""

from __future__ import annotations

from hyperpy.errors import UsageError

# update's flags (their click parameter names) -> (LinuxResources section, key, is a size)
UPDATE_FLAGS: dict[str, tuple[str, str, bool]] = {
    "memory": ("memory", "limit", True),
    "memory_reservation": ("memory", "reservation", True),
    "memory_swap": ("memory", "swap", True),
    "cpu_shares": ("cpu", "shares", False),
    "cpu_period": ("cpu", "period", False),
    "cpu_quota": ("cpu", "quota", False),
    "cpu_rt_period": ("cpu", "realtimePeriod", False),
    "cpu_rt_runtime": ("cpu", "realtimeRuntime", False),
    "cpuset_cpus": ("cpu", "cpus", False),
    "cpuset_mems": ("cpu", "mems", False),
    "pids_limit": ("pids", "limit", False),
    "blkio_weight": ("blockIO", "weight", False),
}
# --kernel-memory and --kernel-memory-tcp are accepted, and ignored, as runc ignores them


def parse_signal(value: str) -> int:
    """runc's signal spellings: KILL, SIGKILL, 9, RTMIN+2; raises UsageError otherwise."""
    import signal

    v = value.strip().upper()
    if v.isdigit():
        num = int(v)
        if 0 < num < 65:
            return num
    else:
        name = v if v.startswith("SIG") else "SIG" + v
        try:
            return int(signal.Signals[name])
        except KeyError:
            pass
        if name.startswith("SIGRTMIN") or name.startswith("SIGRTMAX"):
            base = signal.SIGRTMIN if name.startswith("SIGRTMIN") else signal.SIGRTMAX
            off = name[8:]
            try:
                return int(base) + (int(off) if off else 0)
            except ValueError:
                pass
    raise UsageError(f"unknown signal {value!r}: use a name (TERM, SIGKILL) or a number (1-64)")


def parse_bytes(value: str, flag: str) -> int:
    """runc's sizes: 1024, 300m, 1.5g, 64MiB, 2kb; -1 for unlimited."""
    import re

    v = value.strip().lower()
    if v == "-1":
        return -1
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", v)
    if not m:
        raise UsageError(f"{flag} {value!r}: use bytes or a size like 300m, 1g (or -1)")
    return int(float(m.group(1)) * (1 << (10 * " kmgt".index(m.group(2) or " "))))


def parse_duration(value: str, flag: str) -> float:
    """Go-style durations as runc takes them: 5s, 500ms, 1m, 1.5s."""
    v = value.strip()
    for suffix, mult in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if v.endswith(suffix):
            try:
                out = float(v[: -len(suffix)]) * mult
            except ValueError:
                break
            if out > 0:
                return out
            break
    raise UsageError(f"{flag} {value!r}: use a duration like 5s, 500ms or 1m")


def update_resources(base: dict, flags: dict[str, object]) -> dict:
    """The LinuxResources ``update`` applies: ``base`` (``--resources``' document, or {})
    with each flag given (not None) set over it; sections left empty are dropped. Raises
    UsageError when nothing is left to change."""
    res = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for name in ("memory", "cpu"):  # as runc: present in what is sent, if only empty
        res.setdefault(name, {})
    for name, (section, key, size) in UPDATE_FLAGS.items():
        value = flags.get(name)
        if value is None:
            continue
        if size:
            value = parse_bytes(str(value), "--" + name.replace("_", "-"))
        if section == "pids":  # as before: the flag replaces the document's section
            res[section] = {key: value}
        else:
            res.setdefault(section, {})[key] = value
    res = {k: v for k, v in res.items() if v}
    if not res:
        raise UsageError("update: nothing to change: pass --resources FILE or a limit flag")
    return res


def no_preserved_fds(n: int) -> None:
    if n > 0:
        raise UsageError(
            f"--preserve-fds {n}: host file descriptors cannot be passed into the container's "
            "VM; pass data through the bundle's mounts or stdio instead"
        )
