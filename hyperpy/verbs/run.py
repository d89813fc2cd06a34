"""``run``: create and start a container; in the foreground, forward the caller's signals
to it, wait for it and delete it (unless ``keep``); its exit status."""

from __future__ import annotations

import os
import signal

from hyperpy.sandbox.store import Store
from hyperpy.verbs.create import CreateOptions, create
from hyperpy.verbs.delete import remove
from hyperpy.verbs.exec import wait_exit
from hyperpy.verbs.start import start


def run(store: Store, cid: str, opts: CreateOptions, detach: bool, keep: bool) -> int:
    st = create(store, cid, opts)
    if detach:
        start(store.root, cid)
        return 0
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, lambda s, _f: os.kill(st.pid, s))
    try:
        start(store.root, cid)
        status = wait_exit(st.pid)
    except BaseException:
        remove(store.root, cid, force=True)
        raise
    if not keep:
        remove(store.root, cid, force=True)
    return status
