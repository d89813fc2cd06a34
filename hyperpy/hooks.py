"""OCI lifecycle hooks, run on the host with the container's state JSON on stdin.

Hook binaries are host paths, and the container's namespaces live in the guest, so every
hook runs on the host at the point the runtime-spec names for it:

=================  ==========================================  =====================
hook               when                                        on failure
=================  ==========================================  =====================
prestart           create: the container exists, not started   create fails
createRuntime      create: after prestart                      create fails
createContainer    create: after createRuntime                 create fails
startContainer     start: before the process is released       start fails
poststart          start: after the process runs               warning, continue
poststop           delete: after the container is gone         warning, continue
=================  ==========================================  =====================

A hook's ``timeout`` (seconds) is honoured: a hook still running then is killed and counts
as failed.  Without one, hooks get ``DEFAULT_TIMEOUT`` so that no call hangs forever.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess

from hyperpy.errors import HookError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 120.0
FATAL = ("prestart", "createRuntime", "createContainer", "startContainer")


def run(spec: dict, kind: str, state: dict) -> None:
    """Run the spec's ``kind`` hooks in order; raise HookError if a fatal one fails."""
    hooks = (spec.get("hooks") or {}).get(kind) or []
    payload = json.dumps(state).encode()
    for i, hook in enumerate(hooks):
        where = f"/hooks/{kind}/{i}"
        try:
            _run_one(hook, payload)
        except HookError as exc:
            if kind in FATAL:
                raise HookError(f"{kind} hook {where} ({hook.get('path')}): {exc}") from None
            log.warning("%s hook %s (%s) failed: %s", kind, where, hook.get("path"), exc)


def _run_one(hook: dict, payload: bytes) -> None:
    path = hook["path"]
    args = hook.get("args") or [path]
    env = dict(e.split("=", 1) for e in hook.get("env") or [] if "=" in e)
    timeout = hook.get("timeout") or DEFAULT_TIMEOUT
    try:
        proc = subprocess.Popen(
            args,
            executable=path,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            close_fds=True,
            start_new_session=True,
        )
    except OSError as exc:
        raise HookError(f"cannot run it: {exc.strerror}") from exc
    try:
        out, err = proc.communicate(payload, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        raise HookError(f"timed out after {timeout} s") from None
    if proc.returncode != 0:
        tail = (err or out).decode(errors="replace").strip()[-500:]
        raise HookError(f"exited with {proc.returncode}" + (f": {tail}" if tail else ""))
