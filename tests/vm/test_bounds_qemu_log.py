"""What QEMU itself prints is bounded (issue 21): the guest can make QEMU warn (virtio and 9p
error reports on stderr), and qemu.log lives in the state directory, on /run: host memory.
The direct driver's QEMU writes its stdout and stderr to a socket the monitor drains into a
ring of QEMU_LOG_MAX (hyperpy/vm/console.py). No guest action makes Debian 12's QEMU print
without end (its guest-error reports are once each, or need ``-d guest_errors``), so a
stand-in puts the flood at QEMU's own stderr: a writer forked by a wrapper that then execs
the real QEMU, as a QEMU printing a warning per guest request would. The log stays within
its bound through several turns, the monitor's memory stays flat and the pod answers; and a
boot failure still quotes what the real (jailed) QEMU printed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from hyperpy.vm.console import QEMU_LOG_MAX, read_end
from tests.conftest import HYPERPY, hyperpy, needs_artifacts
from tests.vm.test_bounds import _rss_kib, create_detached

pytestmark = [pytest.mark.vm, needs_artifacts]

FLOOD = 8 << 20  # 8 times the bound: 16 turns of the ring
NOISY = """
import ctypes, os, select, signal, sys, time
GO, FLOOD, REAL = sys.argv[1:4]
if os.fork() == 0:  # the writer: QEMU's child, on QEMU's stdout and stderr
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: gone with QEMU
    os.closerange(3, 65536)  # QEMU's channels are QEMU's
    while not os.path.exists(GO):
        time.sleep(0.1)
    os.set_blocking(2, False)  # QEMU's end never blocks

    def put(line):  # all of it, waiting where QEMU's fprintf would drop it: an exact count
        while line:
            try:
                line = line[os.write(2, line):]
            except BlockingIOError:
                select.select([], [2], [])

    sent, i = 0, 0
    while sent < int(FLOOD):
        line = b"qemu-system-x86_64: warning: virtio: guest request %08d " % i + b"W" * 60
        put(line + b"\\n")
        i += 1
        sent += len(line) + 1
    put(b"qemu-system-x86_64: warning: flood done\\n")
    os._exit(0)
os.execv(REAL, [REAL, *sys.argv[4:]])
"""


def _log_bytes(d: str) -> int:
    total = 0
    for name in ("qemu.log", "qemu.log.1"):
        try:
            total += os.path.getsize(os.path.join(d, name))
        except FileNotFoundError:  # between the turn's rename and the new file
            pass
    return total


def _log_text(d: str) -> bytes:
    return b"".join(open(os.path.join(d, n), "rb").read() for n in ("qemu.log.1", "qemu.log"))


def test_qemus_own_output_stays_within_its_bound(root, bundle, tmp_path):
    real = shutil.which("qemu-system-x86_64")
    assert real, "qemu-system-x86_64 is not installed"
    go = tmp_path / "go"
    script = tmp_path / "noisy_qemu.py"
    script.write_text(NOISY)
    shim = tmp_path / "qemu"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -S {script} {go} {FLOOD} {real} "$@"\n')
    shim.chmod(0o755)
    config = tmp_path / "config.toml"
    config.write_text(f'[vm]\ndriver = "qemu"\nqemu = "{shim}"\naccel = "tcg"\n'
                      "[jail]\nenabled = false\n[template]\nenabled = false\n")  # fmt: skip
    env = dict(os.environ, HYPERPY_CONFIG=str(config))
    cid = "noisy1"
    d = os.path.join(root, cid)
    create_detached(root, bundle(["sleep", "1000"]), cid, tmp_path / "out", env)
    try:
        assert hyperpy(root, "start", cid, env=env).returncode == 0
        monitor = json.loads(open(os.path.join(d, "state.json")).read())["monitor_pid"]
        base = _rss_kib(monitor)
        go.write_text("")
        most, rss = 0, base
        deadline = time.monotonic() + 120
        while b"flood done" not in read_end(os.path.join(d, "qemu.log"), 4096):
            assert time.monotonic() < deadline, f"the flood did not end: {_log_bytes(d)}"
            most = max(most, _log_bytes(d))
            rss = max(rss, _rss_kib(monitor))
            assert most <= QEMU_LOG_MAX + 65536, most  # one read's worth of slack
            time.sleep(0.02)
        assert _log_bytes(d) <= QEMU_LOG_MAX
        # the newest kept, whole, in order; the oldest (QEMU's start-up, the first
        # requests) long gone
        kept = [int(x.split()[5]) for x in _log_text(d).splitlines() if b"guest request" in x]
        assert kept == list(range(kept[0], kept[0] + len(kept))), "lines lost or out of order"
        size = len(b"qemu-system-x86_64: warning: virtio: guest request 00000000 " + b"W" * 60) + 1
        lines = -(-FLOOD // size)
        assert kept[-1] == lines - 1 and kept[0] > lines - QEMU_LOG_MAX // size, (kept[0], lines)
        assert rss - base < 16 << 10, (base, rss)
        st = json.loads(hyperpy(root, "state", cid, env=env).stdout)
        assert st["status"] == "running"
        res = hyperpy(root, "exec", cid, "echo", "still-here", env=env, timeout=60)
        assert (res.returncode, res.stdout) == (0, b"still-here\n"), res.stderr.decode()
        print(f"qemu.log at most {most} bytes (bound {QEMU_LOG_MAX}) of {FLOOD}; "
              f"monitor RSS {base} -> at most {rss} KiB")  # fmt: skip
    finally:
        subprocess.run([HYPERPY, "--root", root, "delete", "--force", cid], env=env,
                       capture_output=True, timeout=60)  # fmt: skip


def test_a_boot_failure_quotes_what_qemu_printed(root, bundle, tmp_path):
    """The real QEMU, jailed, refuses a kernel that is none: create fails as a VM error
    quoting QEMU's own line from the ring."""
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(bytes(1024))  # shorter than its own setup sectors
    kernel.chmod(0o644)
    config = tmp_path / "config.toml"
    config.write_text(f'[vm]\ndriver = "qemu"\nkernel = "{kernel}"\naccel = "tcg"\n'
                      "[template]\nenabled = false\n")  # fmt: skip
    env = dict(os.environ, HYPERPY_CONFIG=str(config))
    res = hyperpy(root, "run", "--bundle", bundle(["true"]), "badkernel1", env=env)
    err = res.stderr.decode()
    assert res.returncode == 7, err
    assert "QEMU exited during start-up" in err, err
    assert "QEMU stderr: qemu: linux kernel too old to load a ram disk" in err, err
    assert os.listdir(root) == [], os.listdir(root)
