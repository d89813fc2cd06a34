"""The guest's size as the host set it: online vCPUs and memory.

The VM boots with its most vCPUs and the kernel onlines one (``maxcpus=1``); the host asks
for the pod's count (``resize``): CPUs 1..n-1 go online, the rest offline, highest first.
Memory is the host's balloon; this reads what the guest has (``/proc/meminfo``: MemTotal
follows the balloon) so the host never inflates it past what the guest uses.
"""

from __future__ import annotations

import os

CPU_DIR = "/sys/devices/system/cpu"


class BadList(ValueError):
    """Not a CPU list; ``part`` is the range at fault, or None if one is not a number."""

    def __init__(self, part: str | None) -> None:
        super().__init__(part)
        self.part = part


def cpu_list(text: str) -> list[int]:
    """The numbers of a CPU list ("0-3,5"), as the kernel parses cpuset.cpus and writes
    /sys/devices/system/cpu/online (the host's preflight checks specs with it too)."""
    out: list[int] = []
    for part in text.strip().split(","):
        lo, dash, hi = part.strip().partition("-")
        try:
            a, b = int(lo), int(hi) if dash else int(lo)
        except ValueError:
            raise BadList(None) from None
        if a < 0 or b < a:
            raise BadList(part)
        out += range(a, b + 1)
    return out


def _read(name: str) -> list[int]:
    with open(os.path.join(CPU_DIR, name)) as f:
        return cpu_list(f.read())


def set_online(n: int) -> list[int]:
    """Online the first ``n`` present vCPUs (at least one, at most all), offline the rest;
    the online CPUs afterwards."""
    present = _read("present")
    online = set(_read("online"))
    n = max(1, min(n, len(present)))
    for cpu in present[1:n]:
        if cpu not in online:
            _write_online(cpu, True)
    for cpu in reversed(present[n:]):
        if cpu in online:
            _write_online(cpu, False)
    return _read("online")


def _write_online(cpu: int, on: bool) -> None:
    path = os.path.join(CPU_DIR, f"cpu{cpu}", "online")
    try:
        with open(path, "w") as f:
            f.write("1" if on else "0")
    except OSError as exc:
        raise ValueError(f"cannot take vCPU {cpu} {'on' if on else 'off'}line: {exc}") from None


def meminfo() -> dict[str, int]:
    """MemTotal and MemAvailable, KiB."""
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                out[key] = int(rest.split()[0])
    return out


def report() -> dict:
    info = meminfo()
    return {"online": _read("online"), "present": len(_read("present")),
            "mem_total_kb": info.get("MemTotal", 0),
            "mem_available_kb": info.get("MemAvailable", 0)}  # fmt: skip
