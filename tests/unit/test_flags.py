"""Command-line flags to values and spec fragments (hyperpy/verbs/flags.py): pure, tabled."""

from __future__ import annotations

import signal

import pytest

from hyperpy.errors import UsageError
from hyperpy.verbs.flags import (
    UPDATE_FLAGS,
    no_preserved_fds,
    parse_bytes,
    parse_duration,
    parse_signal,
    update_resources,
)


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


# update's flags (as click hands them over, None when not given) -> the LinuxResources sent
UPDATES = [
    ({"memory": "300m"}, {"memory": {"limit": 300 << 20}}),
    ({"memory": "-1", "memory_swap": "1g"}, {"memory": {"limit": -1, "swap": 1 << 30}}),
    ({"memory_reservation": "64MiB"}, {"memory": {"reservation": 64 << 20}}),
    ({"cpu_shares": 512, "cpu_quota": 50000, "cpu_period": 100000},
     {"cpu": {"shares": 512, "quota": 50000, "period": 100000}}),
    ({"cpu_rt_period": 1000000, "cpu_rt_runtime": 950000},
     {"cpu": {"realtimePeriod": 1000000, "realtimeRuntime": 950000}}),
    ({"cpuset_cpus": "0-1", "cpuset_mems": "0"}, {"cpu": {"cpus": "0-1", "mems": "0"}}),
    ({"pids_limit": 100}, {"pids": {"limit": 100}}),
    ({"blkio_weight": 300}, {"blockIO": {"weight": 300}}),
    ({"kernel_memory": "1g", "kernel_memory_tcp": "1g", "pids_limit": 5},
     {"pids": {"limit": 5}}),  # accepted and ignored, as runc
    ({"memory": None, "cpu_shares": None, "pids_limit": 0}, {"pids": {"limit": 0}}),
]  # fmt: skip


@pytest.mark.parametrize("flags,want", UPDATES)
def test_update_flags_become_linux_resources(flags, want):
    assert update_resources({}, flags) == want


# --resources' document, then the flags over it
OVER_A_DOCUMENT = [
    ({"memory": {"limit": 1 << 30, "swap": 2 << 30}}, {"memory": "300m"},
     {"memory": {"limit": 300 << 20, "swap": 2 << 30}}),
    ({"cpu": {"shares": 2}, "pids": {"limit": 9}}, {"cpu_quota": 10, "pids_limit": 7},
     {"cpu": {"shares": 2, "quota": 10}, "pids": {"limit": 7}}),
    ({"blockIO": {"weight": 10, "leafWeight": 20}}, {"blkio_weight": 30},
     {"blockIO": {"weight": 30, "leafWeight": 20}}),
    ({"hugepageLimits": [{"pageSize": "2MB", "limit": 4}], "memory": {}}, {},
     {"hugepageLimits": [{"pageSize": "2MB", "limit": 4}]}),
]  # fmt: skip


@pytest.mark.parametrize("base,flags,want", OVER_A_DOCUMENT)
def test_update_flags_go_over_the_resources_document(base, flags, want):
    before = repr(base)
    assert update_resources(base, flags) == want
    assert repr(base) == before  # pure: the document is not changed


@pytest.mark.parametrize("flags", [{}, {"memory": None}, {"kernel_memory": "1g"}])
def test_an_update_that_changes_nothing_is_refused(flags):
    with pytest.raises(UsageError, match="nothing to change"):
        update_resources({}, flags)


@pytest.mark.parametrize(
    "flags,flag",
    [({"memory": "lots"}, "--memory"), ({"memory_swap": "1x"}, "--memory-swap"),
     ({"memory_reservation": ""}, "--memory-reservation")],
)  # fmt: skip
def test_a_bad_size_names_its_flag(flags, flag):
    with pytest.raises(UsageError, match=flag):
        update_resources({}, flags)


def test_every_update_flag_has_a_place():
    assert len(UPDATE_FLAGS) == 12  # with --resources and the two ignored: runc's 15


def test_preserved_fds_are_refused():
    no_preserved_fds(0)
    with pytest.raises(UsageError, match="--preserve-fds 3"):
        no_preserved_fds(3)
