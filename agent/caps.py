"""The five capability sets of a container process, applied as runc does.

Order matters around the uid switch: :func:`before_setuid` drops the bounding set and sets
PR_SET_KEEPCAPS (so permitted survives setuid), :func:`after_setuid` sets effective,
permitted and inheritable with capset(2), then the ambient set.  A spec without
``process.capabilities`` gives the process no capabilities at all, as runc does.
"""

from __future__ import annotations

from agent import linux
from agent.errors import SetupError
from agent.tables import CAPS

PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")


def mask(names: list[str], pointer: str) -> int:
    out = 0
    for i, name in enumerate(names):
        num = CAPS.get(name)
        if num is None:
            raise SetupError(f"unknown capability {name!r}", f"{pointer}/{i}")
        out |= 1 << num
    return out


def masks(caps: dict | None, pointer: str = "/process/capabilities") -> dict[str, int]:
    caps = caps or {}
    return {s: mask(caps.get(s) or [], f"{pointer}/{s}") for s in SETS}


def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return max(CAPS.values())


def before_setuid(m: dict[str, int], top: int) -> None:
    """Drop from the bounding set what it does not list; keep permitted across setuid."""
    for cap in range(top + 1):
        if not m["bounding"] & (1 << cap):
            linux.prctl(PR_CAPBSET_DROP, cap)
    linux.prctl(PR_SET_KEEPCAPS, 1)


def after_setuid(m: dict[str, int]) -> None:
    linux.prctl(PR_SET_KEEPCAPS, 0)
    linux.capset(m["effective"], m["permitted"], m["inheritable"])
    linux.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    for cap in range(64):
        if m["ambient"] & (1 << cap):
            linux.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap)
