"""The monitor process: ``python -m hyperpy.monitor STATE_DIR READY_FD``.

Owns the process's setup before the pod runs: its log (``monitor.log``), the config, what
the driver must open in the host's network namespace, entering the pod's network
namespace, and the one JSON line on READY_FD that reports readiness or the boot error (the
caller's stdio is /dev/null: the runc shim waits on those pipes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys

from hyperpy import network
from hyperpy.config import load as load_config
from hyperpy.log import to_file
from hyperpy.monitor.pod import Monitor
from hyperpy.vm import hypervisor

log = logging.getLogger("hyperpy.monitor")


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
        sock = hypervisor.connect_early(config)  # before the pod's namespace
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
