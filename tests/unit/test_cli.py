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
