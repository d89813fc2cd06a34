"""The ways hyperpy starts host processes: a short-lived command run to its end (:func:`run`,
after cloud-init's ``subp``), and a helper of its own started to outlive the caller
(:func:`spawn_ready`).

Owns, for :func:`run`: argv logging, the timeout every wait must have, and turning failure
into a :class:`~hyperpy.errors.ProcessError` that carries argv, exit code, stdout and
stderr. For :func:`spawn_ready` (the sandbox monitor, a process proxy, a template's
keeper): detached (its own session; none of our stdio unless it carries the caller's), one
ready line on a pipe within a timeout, and a helper that fails to report is never left
running. QEMU is the monitor's own (``vm/qemu.py``: asyncio, its channels, a staged stop).
The module imports only the lean part of the standard library: ``exec`` starts proxies.
"""

from __future__ import annotations

import os
import select
import subprocess
import time

from hyperpy.errors import ProcessError, VMError

TYPE_CHECKING = False  # typing's imports cost `exec` ~5 ms (hyperpy/verbs/__init__.py)
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import TypeVar

    T = TypeVar("T")


def run(
    argv: Sequence[str],
    *,
    timeout: float = 60.0,
    check: bool = True,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` to completion, capturing output; raise ProcessError on failure."""
    import logging

    argv = [str(a) for a in argv]
    logging.getLogger(__name__).debug("run: %s", argv)
    try:
        res = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            check=False,
            close_fds=True,
        )
    except subprocess.TimeoutExpired as exc:
        raise ProcessError(argv, None, _text(exc.stdout), f"timed out after {timeout}s") from exc
    except OSError as exc:
        raise ProcessError(argv, None, "", str(exc)) from exc
    if check and res.returncode != 0:
        raise ProcessError(argv, res.returncode, _text(res.stdout), _text(res.stderr))
    return res


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return data


def said_ok(what: str) -> Callable[[str], str]:
    """The usual check of a ready line: ``ok``, or VMError quoting what came instead."""

    def check(line: str) -> str:
        if line != "ok":
            raise VMError(f"{what} failed: {line or 'it exited'}")
        return line

    return check


def spawn_ready(
    argv: Callable[[int], list[str]],
    what: str,
    timeout: float,
    check: Callable[[str], T],
    *,
    pass_fds: tuple[int, ...] = (),
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    stdio: bool = False,
    started: Callable[[subprocess.Popen[bytes]], None] | None = None,
    grace: float = 0.0,
    disown: bool = False,
) -> tuple[subprocess.Popen[bytes], T]:
    """Start the helper ``argv(fd)`` in a session of its own, ``fd`` the write end of a pipe
    on which it reports one line once it is ready; return it and ``check(line)``.

    Unless ``stdio``, it holds none of our stdin, stdout and stderr (the runc shim reads
    create's output until EOF). ``started(proc)`` runs before the wait (to record its pid,
    move it into a cgroup). Whatever fails from the start on (``started``, no line within
    ``timeout``: VMError naming ``what``, ``check`` raising) stops the helper with SIGKILL;
    one that reported (``check`` refused its line) has ``grace`` seconds to exit by itself
    first (a monitor that reported failure cleans up). With ``disown`` the returned Popen
    is marked done, so that neither it nor subprocess ever waits for the helper: the caller
    waits by pid (``exec``) or a subreaper (the runc shim) does.
    """
    r, w = os.pipe()
    try:
        null = None if stdio else subprocess.DEVNULL
        proc = subprocess.Popen(argv(w), stdin=null, stdout=null, stderr=null, cwd=cwd,
                                env=dict(env) if env is not None else None,
                                pass_fds=(*pass_fds, w), close_fds=True,
                                start_new_session=True)  # fmt: skip
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    said = False
    try:
        if started is not None:
            started(proc)
        line = read_ready(r, timeout, what)
        said = True
        result = check(line)
    except BaseException:
        _stop(proc, grace if said else 0.0)
        raise
    finally:
        os.close(r)
    if disown:
        proc.returncode = 0  # it outlives us: keep Popen from warning about it or reaping it
    return proc, result


def read_ready(fd: int, timeout: float, what: str) -> str:
    """One line from ``fd`` (without its newline; "" if the writer closed it first), or
    VMError when none came within ``timeout``."""
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise VMError(f"{what} did not become ready within {timeout:.0f}s")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


def _stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    if grace > 0:
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            pass
    proc.kill()
    proc.wait(timeout=10)
