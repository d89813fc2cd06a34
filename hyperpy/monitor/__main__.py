"""The monitor process: ``python -m hyperpy.monitor STATE_DIR READY_FD``.

Owns the process's setup before the pod runs: its log (``monitor.log``), the config, the
remote driver's connection (made in the host's network namespace), entering the pod's
network namespace, and the one JSON line on READY_FD that reports readiness or the boot
error (the caller's stdio is /dev/null: the runc shim waits on those pipes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from typing import Any

from hyperpy import network
from hyperpy.config import Config
from hyperpy.config import load as load_config
from hyperpy.log import to_file
from hyperpy.monitor.pod import Monitor

log = logging.getLogger("hyperpy.monitor")


def _remote_connection(config: Config) -> Any:
    """With [vm] driver = "remote", a TCP connection to the remote host, or None."""
    if config.vm.driver != "remote":
        return None
    from hyperpy.vm.ssh import tcp_connection

    return tcp_connection(config.remote)


def report(fd: int, obj: dict) -> None:
    """The one line on READY_FD, which is then closed."""
    if fd < 0:
        return
    with contextlib.suppress(OSError):
        os.write(fd, json.dumps(obj).encode() + b"\n")
        os.close(fd)


def main() -> None:
    state_dir, ready_fd = sys.argv[1], int(sys.argv[2])
    level = logging.DEBUG if os.environ.get("HYPERPY_DEBUG") else logging.INFO
    to_file(os.path.join(state_dir, "monitor.log"),
            "%(asctime)s %(levelname)s %(name)s: %(message)s", level)  # fmt: skip
    request = json.loads(os.environ.get("HYPERPY_MONITOR_REQUEST", "{}"))
    try:
        config = load_config()
        sock = _remote_connection(config)  # before the pod's namespace: the host's network
        if request.get("network") is not None:  # first: every thread is then in it
            network.enter(request["network"].get("netns", ""))
        code = asyncio.run(Monitor(state_dir, config, sock).main(lambda obj: report(ready_fd, obj)))
    except Exception as exc:  # noqa: BLE001 - last resort: say why in the log and to create
        log.exception("monitor failed")
        report(ready_fd, {"ok": False, "error": f"monitor failed: {exc}", "kind": "VMError"})
        code = 1
    logging.shutdown()
    os._exit(code)  # everything is released: skip the interpreter's teardown (delete waits)


if __name__ == "__main__":
    main()
