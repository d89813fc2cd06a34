"""The five capability sets of a container process, applied as runc does.

Order matters around the uid switch, so applying them takes two calls:

* :func:`before_setuid`, before setgroups/setgid/setuid: drops from the bounding set every
  capability (up to the kernel's ``cap_last_cap``) that ``bounding`` does not list, and sets
  PR_SET_KEEPCAPS so that the permitted set survives setuid to a non-zero uid;
* :func:`after_setuid`, after setuid and before exec: clears PR_SET_KEEPCAPS, sets
  effective, permitted and inheritable with capset(2) (64-bit masks,
  _LINUX_CAPABILITY_VERSION_3, through ``linux.capset``), then clears the ambient set and
  raises each ``ambient`` capability.

A spec without ``process.capabilities`` gives the process no capabilities at all: every set,
bounding included, is empty (as runc does).
"""

from __future__ import annotations

from collections.abc import Callable

from agent import linux
from agent.errors import SetupError
from agent.tables import CAPS

PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")
POINTER = "/process/capabilities"


def parse(names: list[str]) -> int:
    """Bitmask of capability names; an unknown one is ignored, as runc ignores it (the host's
    validation says so in --log: "ignoring unknown or unavailable capabilities")."""
    out = 0
    for name in names:
        num = CAPS.get(name)
        if num is not None:
            out |= 1 << num
    return out


def masks(capabilities: dict | None) -> dict[str, int]:
    """Set name -> bitmask for all five sets; absent sets (or ``None``) are empty."""
    capabilities = capabilities or {}
    return {s: parse(capabilities.get(s) or []) for s in SETS}


def last_cap() -> int:
    """The highest capability number the running kernel knows."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return max(CAPS.values())


def before_setuid(m: dict[str, int], top: int | None = None, pointer: str = POINTER) -> None:
    """Call before setgroups/setgid/setuid (needs CAP_SETPCAP): shrink the bounding set to
    ``m["bounding"]`` and keep the permitted set across the uid switch."""
    top = last_cap() if top is None else top
    for cap in range(top + 1):
        if not m["bounding"] & (1 << cap):
            try:
                linux.prctl(PR_CAPBSET_DROP, cap)
            except OSError as exc:
                raise SetupError(
                    f"cannot drop capability {cap} from the bounding set: {exc.strerror}",
                    f"{pointer}/bounding",
                ) from exc
    linux.prctl(PR_SET_KEEPCAPS, 1)


def after_setuid(m: dict[str, int], pointer: str = POINTER) -> None:
    """Call after setuid, before exec: set effective, permitted, inheritable, then ambient."""
    linux.prctl(PR_SET_KEEPCAPS, 0)
    try:
        linux.capset(m["effective"], m["permitted"], m["inheritable"])
    except OSError as exc:
        raise SetupError(
            f"cannot set the capability sets: {exc.strerror} (effective must be within "
            "permitted, inheritable within bounding)",
            pointer,
        ) from exc
    linux.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    for cap in range(m["ambient"].bit_length()):
        if m["ambient"] & (1 << cap):
            try:
                linux.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap)
            except OSError as exc:
                raise SetupError(
                    f"cannot raise capability {cap} in the ambient set: {exc.strerror} "
                    "(it must be permitted and inheritable)",
                    f"{pointer}/ambient",
                ) from exc


def apply(
    capabilities: dict | None,
    pointer: str = POINTER,
    switch_user: Callable[[], None] | None = None,
) -> None:
    """The whole sequence: :func:`before_setuid`, ``switch_user()`` (setgroups, setgid,
    setuid), :func:`after_setuid`."""
    m = masks(capabilities)
    before_setuid(m, pointer=pointer)
    if switch_user is not None:
        switch_user()
    after_setuid(m, pointer)
