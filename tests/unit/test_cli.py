"""CLI parsing that needs no VM: sizes, durations, signals, refused flags."""

from __future__ import annotations

import signal
import subprocess

import pytest

from hyperpy.cli import parse_bytes, parse_duration, parse_signal
from hyperpy.errors import UsageError
from tests.conftest import HYPERPY


@pytest.mark.parametrize(
    "text,value",
    [("1024", 1024), ("300m", 300 << 20), ("1.5g", 3 << 29), ("64MiB", 64 << 20),
     ("2kb", 2048), ("-1", -1)],
)  # fmt: skip
def test_sizes(text, value):
    assert parse_bytes(text, "--memory") == value


@pytest.mark.parametrize("text", ["lots", "12x", "", "-5"])
def test_bad_sizes_name_the_flag(text):
    with pytest.raises(UsageError, match="--memory"):
        parse_bytes(text, "--memory")


def test_durations():
    assert parse_duration("5s", "--interval") == 5.0
    assert parse_duration("500ms", "--interval") == 0.5
    assert parse_duration("1m", "--interval") == 60.0
    with pytest.raises(UsageError, match="--interval"):
        parse_duration("soon", "--interval")


@pytest.mark.parametrize("text", ["KILL", "SIGKILL", "9", "kill"])
def test_signals(text):
    assert parse_signal(text) == signal.SIGKILL


def test_realtime_and_bad_signals():
    assert parse_signal("SIGRTMIN+2") == signal.SIGRTMIN + 2
    with pytest.raises(UsageError, match="unknown signal"):
        parse_signal("NOPE")
    with pytest.raises(UsageError):
        parse_signal("99")


def test_preserve_fds_is_refused_with_a_reason(tmp_path):
    res = subprocess.run(
        [HYPERPY, "--root", str(tmp_path), "create", "--preserve-fds", "2", "--bundle",
         str(tmp_path), "pf1"],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 2
    assert b"--preserve-fds" in res.stderr and b"VM" in res.stderr
    assert not list(tmp_path.iterdir())


def _last_error(log) -> str:  # noqa: ANN001
    import json

    lines = [json.loads(line) for line in log.read_text().splitlines()]
    errors = [line["msg"] for line in lines if line["level"] == "error"]
    assert errors and lines[-1]["level"] == "error", lines
    return errors[-1]


@pytest.fixture
def root_logging():
    """The CLI installs the --log handler on the root logger: put pytest's back after."""
    import logging

    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    yield
    for h in root.handlers:
        if h not in saved:
            h.close()
    root.handlers[:], root.level = saved, level


@pytest.mark.usefixtures("root_logging")
def test_an_error_outside_the_tree_still_ends_create_with_an_error_line(tmp_path, monkeypatch):
    """issue 23 item 6: a create that failed with an exception outside hyperpy's tree exited 1
    with its traceback on stderr (under the runc shim: the container's stdio) and nothing in
    --log, which docker shows as 'exit status 1: unknown'."""
    from hyperpy import cli
    from hyperpy.runtime import Runtime

    def broken(*_a, **_k):  # noqa: ANN202
        raise KeyError("eth0")

    monkeypatch.setattr(Runtime, "create", broken)
    log = tmp_path / "log.json"
    with pytest.raises(SystemExit) as done:
        cli.cli.main([
            "--root", str(tmp_path / "root"), "--log", str(log), "--log-format", "json",
            "create", "--bundle", str(tmp_path), "c1",
        ], prog_name="hyperpy")  # fmt: skip
    assert done.value.code == 1
    msg = _last_error(log)
    assert msg.startswith("create failed: unexpected error: KeyError: 'eth0'"), msg
    assert "Traceback" in log.read_text() and "broken" in log.read_text()


@pytest.mark.usefixtures("root_logging")
def test_an_error_outside_the_tree_still_ends_a_hot_verb_with_an_error_line(tmp_path, monkeypatch):
    from hyperpy import entry, hot

    def broken(*_a, **_k):  # noqa: ANN202
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(hot, "state", broken)
    log = tmp_path / "log.json"
    call = entry.parse(["--root", str(tmp_path), "--log", str(log), "--log-format", "json",
                        "state", "c1"])  # fmt: skip
    assert call is not None and entry.run(call) == 1
    assert _last_error(log).startswith("state failed: unexpected error: OSError: [Errno 5]")


def test_a_state_file_that_is_not_an_object_is_corrupt_not_a_crash(tmp_path):
    (tmp_path / "c1").mkdir()
    (tmp_path / "c1" / "state.json").write_text("[]")
    for verb in (["state", "c1"], ["pause", "c1"]):
        res = subprocess.run([HYPERPY, "--root", str(tmp_path), *verb], capture_output=True,
                             timeout=60)  # fmt: skip
        assert res.returncode == 4 and b"is corrupt: not an object" in res.stderr, res.stderr


def test_a_failed_cleanup_does_not_hide_the_error_that_failed_create(tmp_path, monkeypatch):
    from hyperpy.errors import VMError
    from hyperpy.runtime import Runtime
    from hyperpy.sandbox.store import State

    rt = Runtime(str(tmp_path))
    d = rt.store.make("c1")

    def broken(*_a):  # noqa: ANN202
        raise ProcessLookupError(3, "No such process")

    monkeypatch.setattr(Runtime, "_destroy", broken)
    with pytest.raises(VMError, match="the real reason"):
        try:
            raise VMError("the real reason")
        except BaseException:
            rt._undo_create(d, State(id="c1", bundle=str(tmp_path), rootfs="", created=""))
            raise
    assert rt.store.ids() == []  # the state went all the same
