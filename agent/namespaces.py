"""A container's namespaces, made in its first setup child before the second is forked.

Owns the spec's ``linux.namespaces``: new ones unshared (a new user namespace first, on its
own, with the agent writing its id maps from outside: :func:`write_id_maps`), the ones with
a path joined, and for ``exec`` every namespace of the container's init joined (:func:`join`).
"""

from __future__ import annotations

import os

from agent import linux
from agent.errors import SetupError


def wants_userns(spec: dict) -> bool:
    return any(
        ns.get("type") == "user" and not ns.get("path")
        for ns in (spec.get("linux") or {}).get("namespaces") or []
    )


def write_id_maps(pid: int, spec: dict) -> None:
    """The agent's half of a new user namespace: uid_map and gid_map of the first child."""
    lx = spec.get("linux") or {}
    for key, name in (("uidMappings", "uid_map"), ("gidMappings", "gid_map")):
        lines = "".join(
            f"{m['containerID']} {m['hostID']} {m['size']}\n" for m in lx.get(key) or []
        )
        try:
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write(lines)
        except OSError as exc:
            raise SetupError(
                f"cannot write {name} ({lines!r}): {exc.strerror}", f"/linux/{key}"
            ) from exc


def unshare(spec: dict, userns_sync: tuple[int, int] | None = None) -> None:
    """Create (or join, for entries with a path) the spec's namespaces.  A new user
    namespace comes first, on its own: the agent writes its id maps (``userns_sync`` is our
    end of that handshake) before the other namespaces are made inside it."""
    if userns_sync is not None:
        linux.unshare(linux.CLONE_NEWUSER)
        ready_w, go_r = userns_sync
        os.write(ready_w, b"U")
        if os.read(go_r, 1) != b"G":
            raise SetupError("the agent could not write the user namespace's id maps",
                             "/linux/uidMappings")  # fmt: skip
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    flags = 0
    for i, ns in enumerate(spec.get("linux", {}).get("namespaces", [])):
        kind = ns.get("type", "")
        if kind == "user" and not ns.get("path"):
            continue  # done above
        if kind not in linux.NAMESPACE_FLAGS:
            raise SetupError(f"unknown namespace type {kind!r}", f"/linux/namespaces/{i}/type")
        if ns.get("path"):
            try:
                fd = os.open(ns["path"], os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise SetupError(
                    f"cannot open namespace {ns['path']}: {exc.strerror}",
                    f"/linux/namespaces/{i}/path",
                ) from exc
            try:
                linux.setns(fd, linux.NAMESPACE_FLAGS[kind])
            finally:
                os.close(fd)
        else:
            flags |= linux.NAMESPACE_FLAGS[kind]
    if flags:
        linux.unshare(flags)
    if flags & linux.NAMESPACE_FLAGS["network"]:
        linux.loopback_up()


def join(pid: int) -> None:
    """Enter every namespace of ``pid`` that differs from ours (mount last: it changes root)."""
    order = ("user", "cgroup", "ipc", "uts", "network", "pid", "time", "mount")
    fds = []
    for kind in order:
        name = linux.NAMESPACE_FILES[kind]
        path = f"/proc/{pid}/ns/{name}"
        try:
            if os.readlink(path) == os.readlink(f"/proc/self/ns/{name}"):
                continue
            fds.append((os.open(path, os.O_RDONLY | os.O_CLOEXEC), linux.NAMESPACE_FLAGS[kind]))
        except FileNotFoundError:
            continue
    for fd, flag in fds:
        linux.setns(fd, flag)
        os.close(fd)
