"""The OCI verbs, one module per verb or family, all on one record (:mod:`hyperpy.sandbox.record`).

:mod:`hyperpy.runtime` is their one entry, for the click CLI (:mod:`hyperpy.cli`) and the
fast one (:mod:`hyperpy.entry`) alike; the modules import downwards only (the record, the
lifecycle table, the monitor's socket, and each other as listed here, later on earlier):

- :mod:`.flags`: pure conversion of command-line flags to values and spec fragments;
- :mod:`.state`: the status a caller sees, ``state`` and ``list``, the hooks' state;
- :mod:`.start`, :mod:`.kill`, :mod:`.ps` (``ps``, ``events``), :mod:`.delete`;
- :mod:`.resources`: ``pause``, ``resume`` and ``update``;
- :mod:`.spawn`: starting a process proxy; :mod:`.exec` (``exec``, and ``run``'s wait);
- :mod:`.pod`: which VM a new container joins; :mod:`.create`; :mod:`.run` (create,
  start, wait, delete).

The hot verbs (state, start, kill, delete, ps, events --stats: the shim runs them for
every container) import only the standard library's lean part at the top of their
modules; logging, hooks, the host cgroup and the share are imported when first needed.
This module owns that deferral for logging (:func:`log`) and the host cgroup (:func:`cgroup`).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing's (and collections.abc's) imports cost the hot verbs ~5 ms
if TYPE_CHECKING:
    import logging
    from collections.abc import Callable

    from hyperpy.hostcgroup import HostCgroup

# Called once before the first log record: the fast entry sets up --log only then.
before_logging: list[Callable[[], None]] = []


def log() -> logging.Logger:
    """The verbs' logger, after whatever :data:`before_logging` holds has run."""
    import logging

    while before_logging:
        before_logging.pop()()
    return logging.getLogger("hyperpy.runtime")


def cgroup(rel: str) -> HostCgroup:
    """The pod's host cgroup, ``host_cgroup`` of the record."""
    from hyperpy.hostcgroup import HostCgroup

    return HostCgroup(rel)
