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
    lock = store.try_lock("abc")
    assert lock is not None
    assert store.try_lock("abc") is None  # another pod: it boots cold
    store.sweep_locks()
    assert os.path.exists(tmp_path / "t" / "abc.lock")  # held: kept
    os.close(lock)
    store.sweep_locks()
    assert not os.listdir(tmp_path / "t")
    assert store.fetch("abc") is None and store.list() == [] and not store.remove("abc")
