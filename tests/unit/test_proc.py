"""Helpers hyperpy starts to outlive the caller (the monitor, a proxy, a template's keeper):
one ready line on a pipe, and a helper that fails to report is never left running."""

from __future__ import annotations

import os
import sys
import time

import pytest

from hyperpy import proc
from hyperpy.errors import VMError


def _helper(code: str):  # noqa: ANN202 - argv(fd) for spawn_ready
    return lambda fd: [sys.executable, "-S", "-c", code, str(fd)]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


READY = "import os, sys, time; os.write(int(sys.argv[1]), b'ok\\n'); time.sleep(30)"


def test_a_helper_that_says_ok_runs_on_detached():
    seen = []
    p, line = proc.spawn_ready(_helper(READY), "the helper", 10, proc.said_ok("the helper"),
                               started=seen.append)  # fmt: skip
    try:
        assert line == "ok" and seen == [p] and p.poll() is None
        assert os.getsid(p.pid) == p.pid  # its own session
    finally:
        p.kill()
        p.wait()


def test_a_helper_that_reports_failure_is_stopped_and_quoted():
    code = "import os, sys, time; os.write(int(sys.argv[1]), b'error: no room\\n'); time.sleep(30)"
    pids = []
    with pytest.raises(VMError, match="the helper failed: error: no room"):
        proc.spawn_ready(_helper(code), "the helper", 10, proc.said_ok("the helper"),
                         started=lambda p: pids.append(p.pid))  # fmt: skip
    assert _gone(pids[0])


def test_a_helper_that_says_nothing_is_killed_at_the_timeout():
    pids = []
    start = time.monotonic()
    with pytest.raises(VMError, match="the helper did not become ready within 1s"):
        proc.spawn_ready(_helper("import time; time.sleep(30)"), "the helper", 1,
                         proc.said_ok("the helper"), started=lambda p: pids.append(p.pid),
                         grace=20)  # fmt: skip
    assert time.monotonic() - start < 10  # no grace for one that never reported
    assert _gone(pids[0])


def test_a_helper_that_reported_gets_its_grace_to_exit_by_itself():
    code = ("import os, sys, time; os.write(int(sys.argv[1]), b'bad\\n'); time.sleep(0.5); "
            "sys.exit(3)")  # fmt: skip
    box = []
    with pytest.raises(VMError, match="failed: bad"):
        proc.spawn_ready(_helper(code), "the helper", 10, proc.said_ok("the helper"),
                         started=box.append, grace=20)  # fmt: skip
    assert box[0].returncode == 3  # it exited, not killed


def test_a_disowned_helper_is_left_to_whoever_waits_for_its_pid():
    p, _ = proc.spawn_ready(_helper("import os, sys; os.write(int(sys.argv[1]), b'ok\\n')"),
                            "the helper", 10, proc.said_ok("the helper"), disown=True)  # fmt: skip
    assert p.returncode == 0
    _, status = os.waitpid(p.pid, 0)  # nobody else reaped it
    assert os.waitstatus_to_exitcode(status) == 0
