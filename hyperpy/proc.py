"""The one way hyperpy runs a short-lived host subprocess (after cloud-init's ``subp``).

Owns: argv logging, the timeout every wait must have, and turning failure into a
:class:`~hyperpy.errors.ProcessError` that carries argv, exit code, stdout and stderr.
Long-lived children (QEMU, the monitor, the proxy) are started by their owners instead.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Mapping, Sequence

from hyperpy.errors import ProcessError

log = logging.getLogger(__name__)


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
    argv = [str(a) for a in argv]
    log.debug("run: %s", argv)
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
