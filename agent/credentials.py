"""What a container process may do, set as the last steps of its setup before the start gate.

Owns, in this order: rlimits, the OOM score, the umask, the seccomp filter when it must come
before the uid switch (no_new_privs off: loading it needs CAP_SYS_ADMIN), the bounding set
and keepcaps (``agent/caps.py``), groups, gid and uid, the capability sets, no_new_privs,
and the working directory.
"""

from __future__ import annotations

import os
import resource
import sys

from agent import caps, linux, seccomp
from agent.errors import SetupError
from agent.tables import RLIMITS


def apply(proc: dict, filter_: tuple[bytes, int] | None) -> None:
    """Limits, user, capabilities, no_new_privs.  Without no_new_privs the seccomp filter
    is loaded here, before the uid switch, while CAP_SYS_ADMIN is still effective; otherwise
    the caller loads it right before exec."""
    for i, rl in enumerate(proc.get("rlimits", [])):
        num = RLIMITS.get(rl.get("type", ""))
        if num is None:
            raise SetupError(f"unknown rlimit {rl.get('type')!r}", f"/process/rlimits/{i}/type")
        try:
            resource.setrlimit(num, (rl.get("soft", 0), rl.get("hard", 0)))
        except (ValueError, OSError) as exc:
            raise SetupError(f"cannot set {rl['type']}: {exc}", f"/process/rlimits/{i}") from exc
    if "oomScoreAdj" in proc:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(proc["oomScoreAdj"]))
    user = proc.get("user", {})
    os.umask(user.get("umask", 0o022))
    cap_masks = caps.masks(proc.get("capabilities"))
    if filter_ and not proc.get("noNewPrivileges"):
        # without no_new_privs loading a filter needs CAP_SYS_ADMIN: before setuid empties
        # the effective set (as runc; the profile must then allow what follows, to execve)
        seccomp.load(*filter_)
    caps.before_setuid(cap_masks, caps.last_cap())
    try:
        os.setgroups(user.get("additionalGids", []))
        os.setgid(user.get("gid", 0))
        os.setuid(user.get("uid", 0))
    except OSError as exc:
        raise SetupError(f"cannot switch to user {user}: {exc.strerror}", "/process/user") from exc
    caps.after_setuid(cap_masks)
    if proc.get("noNewPrivileges"):
        linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    cwd = proc.get("cwd") or "/"
    try:
        os.chdir(cwd)
    except OSError as exc:
        raise SetupError(f"cannot enter cwd {cwd!r}: {exc.strerror}", "/process/cwd") from exc
    sys.stdout.flush()
