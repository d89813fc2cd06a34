"""The process ``exec`` runs, built from config.json's and the flags as runc's exec builds it.

Pure but for :func:`from_file`. Without ``--process``: config.json's ``process``
(capabilities, rlimits, user and all) with the flags applied as runc's ``getProcess``
applies them: the arguments replace ``args``; ``--cwd`` replaces ``cwd``; ``--env`` is
appended to ``env``; ``terminal`` is ``--tty``; ``--no-new-privs`` sets
``noNewPrivileges``; ``--user uid[:gid]`` replaces the uid (and the gid only when given);
``--additional-gids`` are appended. A ``--process`` file is checked for the shapes the
guest relies on, with JSON pointers (:func:`check_document`).

``--cap NAME`` adds NAME to the bounding, effective and permitted sets, and to ambient only
when the spec lists inheritable capabilities (runc since 1.2: exec no longer touches
inheritable, and the kernel raises an ambient capability only if it is inheritable too).
hyperpy applies ``--cap`` to a ``--process`` file's process as well, where runc silently
ignores it. An unknown name is a usage error naming the flag.
"""

from __future__ import annotations

import copy

from agent.tables import CAPS
from hyperpy.errors import UsageError


def check_cap(name: str, flag: str = "--cap") -> None:
    if name in CAPS:
        return
    hint = ""
    for guess in ("CAP_" + name.upper(), name.upper()):
        if guess in CAPS:
            hint = f" (did you mean {guess}?)"
            break
    raise UsageError(
        f"{flag} {name!r}: unknown capability{hint}; expected a Linux capability name such "
        "as CAP_SYS_ADMIN (CAP_CHOWN ... CAP_CHECKPOINT_RESTORE)"
    )


def add_caps(process: dict, names: tuple[str, ...] | list[str], flag: str = "--cap") -> dict:
    """``process`` with each capability added as ``runc exec --cap`` adds it."""
    for name in names:
        check_cap(name, flag)
    if not names:
        return process
    process = copy.deepcopy(process)
    caps = process.setdefault("capabilities", {}) or {}
    process["capabilities"] = caps
    sets = ["bounding", "effective", "permitted"]
    if caps.get("inheritable") is not None:
        sets.append("ambient")
    for kind in sets:
        have = list(caps.get(kind) or [])
        caps[kind] = have + [n for n in names if n not in have]
    return process


def from_file(path: str, caps: tuple[str, ...] = ()) -> dict:
    """A ``--process`` file's process (read as :mod:`hyperpy.oci.document` reads), checked,
    with ``--cap`` applied."""
    from hyperpy.oci import document

    try:
        raw = document.load(path)
    except document.DocumentError as exc:
        raise UsageError(f"--process {path}: {exc}") from None
    return add_caps(check_document(raw, f"--process {path}"), caps)


def check_document(p: object, source: str) -> dict:
    """A ``--process`` file's process: the shapes the guest relies on, each named by its
    JSON pointer (the full schema is not loaded on this path: the shim execs through it)."""
    problem = _problem(p)
    if problem:
        raise UsageError(f"{source}#{problem[0]}: {problem[1]}")
    assert isinstance(p, dict)
    return p


def _problem(p: object) -> tuple[str, str] | None:
    if not isinstance(p, dict):
        return "", "expected a JSON object (an OCI process)"
    args = p.get("args")
    if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
        return "/args", 'expected a non-empty array of strings, e.g. ["sh"]'
    if not isinstance(p.get("env", []), list) or not all(
        isinstance(e, str) for e in p.get("env", [])
    ):
        return "/env", 'expected an array of "NAME=value" strings'
    cwd = p.get("cwd", "/")
    if not isinstance(cwd, str) or not cwd.startswith("/"):
        return "/cwd", "expected an absolute path inside the container"
    if not isinstance(p.get("terminal", False), bool):
        return "/terminal", "expected true or false"
    user = p.get("user", {})
    if not isinstance(user, dict):
        return "/user", 'expected an object such as {"uid": 0, "gid": 0}'
    for key in ("uid", "gid"):
        v = user.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            return f"/user/{key}", "expected a non-negative integer"
    caps = p.get("capabilities") or {}
    if not isinstance(caps, dict):
        return "/capabilities", "expected an object of capability sets"
    for kind, names in caps.items():
        if not isinstance(names, list):
            return f"/capabilities/{kind}", "expected an array of capability names"
        for i, name in enumerate(names):
            if name not in CAPS:
                return f"/capabilities/{kind}/{i}", f"unknown capability {name!r}"
    return None


def parse_user(value: str) -> tuple[int, int | None]:
    """``uid[:gid]`` as numbers (runc takes no names: the guest's /etc/passwd is not ours)."""
    uid_s, colon, gid_s = value.partition(":")
    try:
        uid = int(uid_s)
        gid = int(gid_s) if colon else None
    except ValueError:
        raise UsageError(
            f"--user {value!r}: expected uid[:gid] as numbers, e.g. 1000:1000"
        ) from None
    if uid < 0 or (gid is not None and gid < 0):
        raise UsageError(f"--user {value!r}: ids cannot be negative")
    return uid, gid


def from_flags(
    base: dict,
    args: list[str],
    *,
    tty: bool = False,
    cwd: str | None = None,
    env: tuple[str, ...] = (),
    user: str | None = None,
    additional_gids: tuple[int, ...] = (),
    no_new_privs: bool = False,
    caps: tuple[str, ...] = (),
) -> dict:
    """config.json's process ``base`` with exec's flags applied (runc's getProcess)."""
    for extra in additional_gids:
        if extra < 0:
            raise UsageError(f"--additional-gids {extra}: a group id cannot be negative")
    p = copy.deepcopy(base)
    p["args"] = list(args)
    if cwd:
        p["cwd"] = cwd
    p.setdefault("cwd", "/")
    p["env"] = list(p.get("env") or []) + list(env)
    p["terminal"] = tty
    if no_new_privs:
        p["noNewPrivileges"] = True
    p["user"] = dict(p.get("user") or {"uid": 0, "gid": 0})
    if user:
        uid, gid = parse_user(user)
        p["user"]["uid"] = uid
        if gid is not None:
            p["user"]["gid"] = gid
    if additional_gids:
        p["user"]["additionalGids"] = list(p["user"].get("additionalGids") or []) + list(
            additional_gids
        )
    return add_caps(p, caps)
