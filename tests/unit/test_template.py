"""The template key and store parts that need no VM (tests/vm/test_template.py boots them)."""

from __future__ import annotations

import os

from hyperpy.vm import template


def test_key_ignores_fd_numbers_and_follows_every_input(tmp_path):
    f = tmp_path / "kernel"
    f.write_bytes(b"k")
    argv = ["qemu", "-chardev", "socket,id=qmp,fd=10", "-object", "mem-path=/proc/self/fd/11"]
    k = template.key(argv, [str(f)])
    renumbered = ["qemu", "-chardev", "socket,id=qmp,fd=12", "-object", "mem-path=/proc/self/fd/3"]
    assert template.key(renumbered, [str(f)]) == k
    assert template.key([*argv, "-m", "512M"], [str(f)]) != k
    os.utime(f, (1, 1))
    assert template.key(argv, [str(f)]) != k


def test_one_builder_and_locks_swept_only_when_free(tmp_path):
    store = template.Store(str(tmp_path / "t"))
    K = "0123456789abcdef0123456789abcdef"
    lock = store.try_lock(K)
    assert lock is not None
    assert store.try_lock(K) is None  # another pod: it boots cold
    store.sweep_locks()
    assert os.path.exists(tmp_path / "t" / f"{K}.lock")  # held: kept
    os.close(lock)
    store.sweep_locks()
    assert not os.listdir(tmp_path / "t")
    assert store.fetch(K) is None and store.list() == [] and not store.remove(K)


def test_keys_are_checked_before_they_name_a_path(tmp_path):
    import pytest

    from hyperpy.errors import UsageError

    with pytest.raises(UsageError, match="not a template key"):
        template.Store(str(tmp_path)).remove("../../etc")


def test_reseed_credits_host_entropy_then_reseeds(monkeypatch):
    """Pods from one template share the guest RNG's state until this runs (at hello)."""
    import struct

    from agent import linux

    calls = []
    monkeypatch.setattr(os, "open", lambda path, flags: calls.append(("open", path)) or 99)
    monkeypatch.setattr(os, "close", lambda fd: calls.append(("close", fd)))
    import fcntl

    monkeypatch.setattr(fcntl, "ioctl", lambda fd, req, arg=0: calls.append((fd, req, arg)))
    linux.reseed_rng(b"\x01" * 64)
    info = struct.pack("ii", 512, 64) + b"\x01" * 64  # rand_pool_info: bits, bytes, data
    assert calls == [("open", "/dev/random"), (99, 0x40085203, info), (99, 0x5207, 0),
                     ("close", 99)]  # fmt: skip


def test_a_failed_build_is_remembered_until_rm(tmp_path, monkeypatch):
    store = template.Store(str(tmp_path / "t"))
    k = "0123456789abcdef0123456789abcdef"
    os.makedirs(store.dir)
    assert store.failed_recently(k) == ""
    store.mark_failed(k, "QEMU said no")
    assert store.failed_recently(k) == "QEMU said no"
    monkeypatch.setattr(template, "FAILED_FOR", 0.0)  # the mark has aged
    assert store.failed_recently(k) == ""
    store.sweep_locks()  # template rm
    assert not os.listdir(store.dir)


def test_no_keeper_is_started_below_a_supervisor_that_waits_for_it(tmp_path):
    """conmon waits for every process below it before it exits, so a pod under it must not
    start a template's keeper (which outlives the pod): its ancestors are looked at."""
    import shutil
    import subprocess
    import sys

    from hyperpy.vm import template

    fake = tmp_path / "conmon"
    shutil.copy("/bin/sh", fake)
    probe = "from hyperpy.vm import template; print(repr(template.waiting_reaper()))"
    for shell, want in ((str(fake), "'conmon'"), ("/bin/sh", "''")):
        res = subprocess.run([shell, "-c", f"{sys.executable} -c '{probe}'; true"],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
        assert res.stdout.strip() == want, (shell, res.stdout, res.stderr)
    assert template.waiting_reaper(1) == ""
