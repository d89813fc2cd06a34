"""The container lifecycle: statuses, which operation each allows, checked in one place.

The status stored in state.json is what the CLI last set (creating, created, running,
paused); what a caller sees is :func:`effective_status`, which also knows that a container
whose init process exited, or whose sandbox monitor is gone, is stopped.
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
        hint = {
            "delete": " (stop it first, or use `delete --force`)",
            "start": " (only a created container can be started)",
            "kill": " (it is not running)",
        }.get(operation, "")
        raise InvalidState(
            f"cannot {operation.replace('-', ' ')} container {cid}: it is {status}{hint}"
        )


def effective_status(stored: Status, exited: bool, monitor_alive: bool) -> Status:
    if stored == S.CREATING:
        return S.STOPPED if not monitor_alive else S.CREATING
    if exited or not monitor_alive:
        return S.STOPPED
    return stored
