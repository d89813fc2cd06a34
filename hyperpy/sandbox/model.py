"""The container lifecycle: statuses, which operation each allows, checked in one place.

The status stored in state.json is what the CLI last set (creating, created, running,
paused); what a caller sees is :func:`effective_status`, which also knows that a container
whose init process exited, or whose sandbox monitor is gone, is stopped. A refused
operation is an ``InvalidState`` worded as runc words it (:func:`refusal`), because
containerd's shim decides by those words whether a container has already exited.
"""

from __future__ import annotations

import enum

from hyperpy.errors import InvalidState


class Status(enum.StrEnum):
    CREATING = "creating"
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


S = Status
# operation -> statuses it is allowed in (runc's rules).
ALLOWED: dict[str, frozenset[Status]] = {
    "start": frozenset({S.CREATED}),
    "kill": frozenset({S.CREATED, S.RUNNING, S.PAUSED}),
    "kill-all": frozenset(S),  # a stopped container: nothing left to signal, no error (runc)
    "delete": frozenset({S.CREATED, S.STOPPED}),
    "delete-force": frozenset(S),
    "exec": frozenset({S.CREATED, S.RUNNING}),
    "pause": frozenset({S.RUNNING}),
    "resume": frozenset({S.PAUSED}),
    "update": frozenset({S.CREATED, S.RUNNING, S.PAUSED}),
    "ps": frozenset({S.CREATED, S.RUNNING, S.PAUSED, S.STOPPED}),
    "events": frozenset({S.CREATED, S.RUNNING, S.PAUSED}),
}
# operation -> status after it succeeds (None: unchanged).
AFTER: dict[str, Status] = {"start": S.RUNNING, "pause": S.PAUSED, "resume": S.RUNNING}


def check(operation: str, status: Status, cid: str) -> None:
    if status not in ALLOWED[operation]:
        raise InvalidState(refusal(operation, status, cid))


def refusal(operation: str, status: Status, cid: str) -> str:
    """Why ``operation`` is refused in ``status``, in runc's words.

    containerd's runc shim and go-runc match these texts: a kill whose error contains
    ``container not running`` is "already exited" (anything else makes the caller retry),
    one containing ``does not exist`` is "no such container"; so the runc phrase comes
    first, hyperpy's detail after it.
    """
    if operation == "kill":
        return f"cannot kill container {cid}: container not running (it is {status})"
    if operation == "start":
        if status == S.STOPPED:
            return f"cannot start a container that has stopped ({cid})"
        if status == S.RUNNING:
            return f"cannot start an already running container ({cid})"
        return f"cannot start a container in the {status} state ({cid}): only a created one"
    if operation == "delete":
        return (
            f"cannot delete container {cid} that is not stopped: {status} "
            "(stop it first, or use `delete --force`)"
        )
    if operation == "exec":
        return f"cannot exec in a {status} container ({cid})"
    if operation in ("pause", "update"):
        return f"cannot {operation} container {cid}: container not running (it is {status})"
    if operation == "resume":
        return f"cannot resume container {cid}: container not paused (it is {status})"
    if operation == "events":
        return f"container with id {cid} is not running (it is {status})"
    return f"cannot {operation.replace('-', ' ')} container {cid}: it is {status}"


def effective_status(stored: Status, exited: bool, monitor_alive: bool) -> Status:
    if stored == S.CREATING:
        return S.STOPPED if not monitor_alive else S.CREATING
    if exited or not monitor_alive:
        return S.STOPPED
    return stored
