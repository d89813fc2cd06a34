"""What the guest's /proc says about its processes: which share a container's pid namespace
(``ps``, ``signal --all``) and the row ``ps`` shows for each."""

from __future__ import annotations

import os


def pids_in_namespace(init_pid: int) -> list[int]:
    """Every guest pid that shares init_pid's pid namespace (init first)."""
    try:
        target = os.readlink(f"/proc/{init_pid}/ns/pid")
    except OSError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") == target:
                pids.append(int(entry))
        except OSError:
            continue
    if target == os.readlink("/proc/self/ns/pid"):
        return [init_pid] if init_pid in pids else []
    return sorted(pids, key=lambda p: (p != init_pid, p))


def process_info(pid: int) -> dict | None:
    """pid, ppid, uid, state and command line of a guest process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").strip().decode(errors="replace")
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None
    comm_end = stat.rfind(")")
    fields = stat[comm_end + 2 :].split()
    comm = stat[stat.find("(") + 1 : comm_end]
    return {"pid": pid, "ppid": int(fields[1]), "uid": uid, "state": fields[0],
            "cmd": cmd or f"[{comm}]"}  # fmt: skip
