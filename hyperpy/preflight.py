"""What create and exec check before a VM boots or a request is sent to it.

Everything that can fail for a reason known on the host fails here, before any state,
process or mount exists, with the flag or the JSON pointer named and the fix said:

* the caller's paths: ``--pid-file`` (its directory must exist: the file is written last,
  after the boot) and ``--console-socket`` (a listening unix socket; it is only stat'ed, the
  caller's listener accepts one connection, the proxy's);
* what the wire and the guest kernel can carry: one message to the guest is at most
  ``agent.protocol.MAX_PAYLOAD`` bytes (the spec, or an exec'd process, travels in one), one
  argument or environment string at most MAX_ARG_STRLEN bytes (the guest's execve refuses
  longer ones);
* resources the guest or the host would refuse: the values the agent would write to the
  container's cgroup (``agent.resources.translate``, the guest's own rules), a memory limit
  too small for the container's init to start, and CPU and memory-node lists
  (``linux.resources.cpu.cpus``/``mems``) against this host and the VM.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

from agent import protocol as P
from agent import resources as guest_resources
from agent.errors import SetupError
from hyperpy.errors import SpecError, UsageError

# include/uapi/linux/binfmts.h: the longest argv or envp string execve takes, its NUL included
MAX_ARG_STRLEN = 32 * 4096
# Room in a message for what travels beside the spec (op, ids, the bundle and state paths,
# each at most PATH_MAX), so the spec alone must fit in MAX_PAYLOAD - HEADROOM.
HEADROOM = 16 << 10
# The container's init is the agent forked (Python, copy-on-write) until it execs: its
# setup needs about 1.5 MiB (measured with busybox under TCG); below this limit the guest's
# OOM killer ends every init before it can exec.  Above it, an init that still does not
# fit is reported by the agent as OOM-killed (as runc reports it).
MIN_MEMORY_LIMIT = 4 << 20


def pid_file(path: str, flag: str = "--pid-file") -> None:
    """The pid file is written after the VM booted: its directory must exist now."""
    full = os.path.abspath(path)
    parent = os.path.dirname(full)
    if not os.path.isdir(parent):
        what = "is not a directory" if os.path.exists(parent) else "does not exist"
        raise UsageError(
            f"{flag} {path}: directory {parent} {what}: create it first, or name a file in "
            "an existing directory"
        )
    if os.path.isdir(full):
        raise UsageError(f"{flag} {path} is a directory: name a file to write the pid to")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{flag} {path}: directory {parent} is not writable (or read-only)")


def console_socket(path: str) -> None:
    """A unix socket the caller listens on (runc's --console-socket contract)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise UsageError(
            f"--console-socket {path}: {exc.strerror}: the caller must create and listen on "
            "this unix socket before create (it receives the terminal's master fd)"
        ) from None
    if not stat.S_ISSOCK(st.st_mode):
        raise UsageError(
            f"--console-socket {path} is not a unix socket: pass the path of the socket the "
            "caller listens on"
        )


# --- what a message to the guest can carry ---------------------------------------------


def _strings(value: Any, ptr: str = "") -> list[tuple[str, int]]:
    """(pointer, encoded JSON size) of every string in ``value``, iteratively."""
    out: list[tuple[str, int]] = []
    stack: list[tuple[Any, str]] = [(value, ptr)]
    while stack:
        item, p = stack.pop()
        if isinstance(item, dict):
            for k, v in item.items():
                key = str(k).replace("~", "~0").replace("/", "~1")
                out.append((f"{p}/{key}", len(json.dumps(k))))
                stack.append((v, f"{p}/{key}"))
        elif isinstance(item, list):
            stack.extend((v, f"{p}/{i}") for i, v in enumerate(item))
        elif isinstance(item, str):
            out.append((p, len(json.dumps(item))))
    return out


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")))  # as agent.protocol.encode_msg


def oversize(value: Any, what: str) -> tuple[str, str] | None:
    """(pointer, message) if ``value`` cannot travel in one message to the guest."""
    size = _size(value)
    limit = P.MAX_PAYLOAD - HEADROOM
    if size <= limit:
        return None
    ptr, biggest = max(_strings(value), key=lambda s: s[1], default=("", 0))
    return ptr, (
        f"{what} is {size} bytes as JSON; one message to the guest carries at most {limit} "
        f"(the protocol's frame limit, {P.MAX_PAYLOAD} bytes, less room for the request "
        f"around it); its largest value, here, is {biggest} bytes: pass large data in a "
        "file of the rootfs or of a mount instead"
    )


def long_string(process: dict) -> tuple[str, str] | None:
    """(pointer below the process, message) of an argument or environment string that the
    guest kernel's execve would refuse."""
    for key in ("args", "env"):
        for i, s in enumerate(process.get(key) or []):
            n = len(str(s).encode(errors="surrogateescape")) + 1
            if n > MAX_ARG_STRLEN:
                word = "argument" if key == "args" else "environment string"
                return f"/{key}/{i}", (
                    f"this {word} is {n - 1} bytes; Linux's execve takes at most "
                    f"{MAX_ARG_STRLEN - 1} per string (MAX_ARG_STRLEN): pass large data in "
                    "a file of the rootfs or of a mount instead"
                )
    return None


def spec_fits(spec: dict, guest_spec: dict, path: str) -> None:
    """The spec (as sent to the monitor, and as rewritten for the guest) and its process."""
    found = long_string(spec.get("process") or {})
    if found:
        raise SpecError(found[1], "/process" + found[0], path)
    for value in (spec, guest_spec):
        found = oversize(value, "config.json")
        if found:
            raise SpecError(found[1], found[0], path)


def process_fits(process: dict, source: str) -> None:
    """An exec'd process; ``source`` names where it came from (a flag, a file)."""
    found = long_string(process) or oversize(process, "the process")
    if found:
        raise UsageError(f"{source}#{found[0]}: {found[1]}")


# --- resources -----------------------------------------------------------------------------


def id_list(text: str, pointer: str, path: str) -> set[int]:
    """The numbers of a cpuset list ("0-3,5"), as the kernel parses cpuset.cpus
    (``agent.vcpus.cpu_list``), its errors as SpecErrors."""
    from agent.vcpus import BadList, cpu_list

    try:
        return set(cpu_list(text))
    except BadList as exc:
        if exc.part is None:
            raise SpecError(
                f'found {text!r}, expected a list of numbers and ranges such as "0-1,3"',
                pointer,
                path,
            ) from None
        raise SpecError(f"found {text!r}: the range {exc.part!r} is empty or negative",
                        pointer, path) from None  # fmt: skip


def _online(path: str) -> set[int]:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return {0}
    return id_list(text, "", path) if text else {0}


def host_cpus() -> set[int]:
    return _online("/sys/devices/system/cpu/online")


def resources(spec: dict, path: str) -> None:
    """What the guest's cgroup and the host's would refuse, found before the boot."""
    res = (spec.get("linux") or {}).get("resources") or {}
    try:
        guest_resources.translate(res)
    except SetupError as exc:
        raise SpecError(str(exc), exc.pointer, path) from None
    limit = (res.get("memory") or {}).get("limit") or 0
    if 0 < limit < MIN_MEMORY_LIMIT:
        raise SpecError(
            f"found {limit} (bytes), too little for the container's init to start (it is "
            f"OOM-killed before it can exec); give at least {MIN_MEMORY_LIMIT >> 20} MiB, or -1 "
            "for no limit",
            "/linux/resources/memory/limit",
            path,
        )
    cpu = res.get("cpu") or {}
    if cpu.get("cpus"):
        ptr = "/linux/resources/cpu/cpus"
        extra = id_list(cpu["cpus"], ptr, path) - host_cpus()
        if extra:
            have = _online_text("/sys/devices/system/cpu/online")
            raise SpecError(
                f"found {cpu['cpus']!r}, but this host has no CPU {min(extra)} (online: "
                f"{have}): name CPUs the host has",
                ptr,
                path,
            )
    if cpu.get("mems"):
        ptr = "/linux/resources/cpu/mems"
        if id_list(cpu["mems"], ptr, path) - {0}:
            raise SpecError(
                f"found {cpu['mems']!r}, but the VM has one memory node, 0: use \"0\" or "
                "leave mems out",
                ptr,
                path,
            )


def update_resources(res: dict) -> None:
    """``update``'s LinuxResources: what the guest's cgroup would refuse, as a usage error
    (the document came from --resources or the flags)."""
    mem = res.get("memory") or {}
    if mem.get("swap") not in (None, 0, -1) and mem.get("limit") in (None, 0):
        # the guest takes swap alone against its current limit (agent.cgroups.update)
        res = {**res, "memory": {**mem, "limit": -1}}
    try:
        guest_resources.translate(res, pointer="")
    except SetupError as exc:
        raise UsageError(f"update: LinuxResources#{exc.pointer}: {exc}") from None
    cpu = res.get("cpu") or {}
    for key in ("cpus", "mems"):
        if cpu.get(key) is not None and not isinstance(cpu[key], str):
            raise UsageError(f'update: LinuxResources#/cpu/{key}: expected a string like "0-1"')


def _online_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return "unknown"
