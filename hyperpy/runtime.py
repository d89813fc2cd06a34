"""The OCI operations, one method each: the one entry to the verbs for both command lines.

:class:`Runtime` is what :mod:`hyperpy.cli` (click) and :mod:`hyperpy.entry` (the shim's
hot calls) call; each method runs its verb's module in :mod:`hyperpy.verbs`, imported
when called, so that a hot verb imports only its own lean module (this one imports only
the store at the top).
"""

from __future__ import annotations

from hyperpy.sandbox.store import Store

TYPE_CHECKING = False  # typing's import costs the hot verbs
if TYPE_CHECKING:
    import builtins
    from collections.abc import Callable

    from hyperpy.sandbox.record import State
    from hyperpy.verbs.create import CreateOptions
    from hyperpy.verbs.exec import ExecOptions, ProcessFlags


class Runtime:
    def __init__(self, root: str, systemd_cgroup: bool = False) -> None:
        self.store = Store(root)
        self.root = root
        self.systemd_cgroup = systemd_cgroup

    # --- reading ------------------------------------------------------------------------
    def state(self, cid: str) -> dict:
        from hyperpy.verbs.state import state

        return state(self.root, cid)

    def list(self) -> builtins.list[dict]:
        from hyperpy.verbs.state import list_states

        return list_states(self.root, self.store.ids())

    def load(self, cid: str) -> State:
        return self.store.load(cid)

    def ps(self, cid: str, guest: bool = True) -> tuple[builtins.list[int], builtins.list[dict]]:
        from hyperpy.verbs.ps import ps

        return ps(self.root, cid, guest)

    def stats(self, cid: str) -> dict:
        from hyperpy.verbs.ps import stats

        return stats(self.root, cid)

    def events(self, cid: str, once: bool, period: float, emit: Callable[[str], None]) -> None:
        from hyperpy.verbs.ps import events

        events(self.root, cid, once, period, emit)

    # --- the lifecycle ------------------------------------------------------------------
    def _opts(self, opts: CreateOptions) -> CreateOptions:
        import dataclasses

        return dataclasses.replace(opts, systemd_cgroup=opts.systemd_cgroup or self.systemd_cgroup)

    def create(self, cid: str, opts: CreateOptions) -> State:
        from hyperpy.verbs.create import create

        return create(self.store, cid, self._opts(opts))

    def run(self, cid: str, opts: CreateOptions, detach: bool, keep: bool) -> int:
        from hyperpy.verbs.run import run

        return run(self.store, cid, self._opts(opts), detach, keep)

    def start(self, cid: str) -> None:
        from hyperpy.verbs.start import start

        start(self.root, cid)

    def kill(self, cid: str, sig: int, all_: bool = False) -> None:
        from hyperpy.verbs.kill import kill

        kill(self.root, cid, sig, all_)

    def exec(self, cid: str, flags: ProcessFlags, opts: ExecOptions) -> int:
        from hyperpy.verbs.exec import exec_process

        return exec_process(self.root, cid, flags, opts)

    def pause(self, cid: str, resume: bool = False) -> None:
        from hyperpy.verbs.resources import pause

        pause(self.root, cid, resume)

    def update(self, cid: str, resources: dict) -> None:
        from hyperpy.verbs.resources import update

        update(self.root, cid, resources)

    def delete(self, cid: str, force: bool = False) -> None:
        """With ``force``, a container that does not exist is not an error (runc's)."""
        from hyperpy.verbs.delete import delete

        delete(self.root, cid, force)
