"""Starting a container process's proxy (``python -m hyperpy.proxy``) and its pid file.

A helper is spawned detached (its own session; none of our stdio unless it carries the
caller's) and reports one ready line on a pipe; :func:`read_ready` waits for that line.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

from hyperpy.errors import VMError


def read_ready(fd: int, timeout: float, what: str) -> str:
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


def spawn_detached(
    argv: list[str],
    pass_fds: tuple[int, ...],
    env: dict | None = None,
    stdio: bool = False,
    session: bool = True,
) -> subprocess.Popen:
    """Start a helper; unless ``stdio``, it holds none of our stdin/stdout/stderr."""
    null = subprocess.DEVNULL
    return subprocess.Popen(
        argv,
        stdin=None if stdio else null,
        stdout=None if stdio else null,
        stderr=None if stdio else null,
        pass_fds=pass_fds,
        close_fds=True,
        start_new_session=session,
        env=env,
    )


def spawn_proxy(
    d: str, proc: int, console_socket: str | None, stdio: bool, monitor_pid: int
) -> int:
    """Start the process proxy; with ``stdio`` it carries the caller's stdin/out/err.

    With a console socket the container's stdio is the pty, and the proxy must hold
    none of the caller's fds: the runc shim reads create's output until EOF.
    """
    r, w = os.pipe()
    argv = [sys.executable, "-m", "hyperpy.proxy", d, str(proc), str(w)]
    if monitor_pid:  # the pod's network namespace: docker's hook finds it through our pid
        argv += ["--netns", f"/proc/{monitor_pid}/ns/net"]
    if console_socket:
        argv += ["--console-socket", os.path.abspath(console_socket)]
    try:
        p = spawn_detached(argv, (w,), stdio=stdio, session=True)
    finally:
        os.close(w)
    try:
        line = read_ready(r, 30, "the process proxy")
    finally:
        os.close(r)
    if line != "ok":
        p.kill()
        p.wait(timeout=10)
        raise VMError(f"the process proxy failed: {line or 'it exited'}")
    # The proxy outlives us; the runc shim (a subreaper) or `run` reaps it.
    p.returncode = 0  # keep Popen.__del__ from warning about a running child
    return p.pid


def write_pid_file(path: str, pid: int) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.rename(tmp, path)
