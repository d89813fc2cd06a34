"""What a guest that took over its QEMU can send on the agent channel is bounded (issue 21):
a real pod whose QEMU is wrapped by a stand-in (tests/vm/hostile_qemu.py) that puts hostile
frames between the real agent's, at the monitor's own end of the channel. Garbage, floods of
events and output heedless of flow control each pass their bound several times over while
the monitor's memory stays flat and the pod answers state and exec; a guest that stops
reading holds back the caller's stdin, not the host's memory; an oversize frame ends the pod,
naming it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from hyperpy.agent_link import OUTPUT_LIMIT
from hyperpy.log import DAEMON_LOG_MAX
from tests.conftest import HYPERPY, hyperpy, needs_artifacts
from tests.vm.test_bounds import _rss_kib, create_detached

pytestmark = [pytest.mark.vm, needs_artifacts]

STAND_IN = Path(__file__).with_name("hostile_qemu.py")
SLACK_KIB = 16 << 10  # what the monitor's heap may take on top (Python's allocator, frames)


class Hostile:
    """The stand-in's control and status files, and a config that runs it as QEMU."""

    def __init__(self, tmp: Path) -> None:
        self.control, self.status = tmp / "control", tmp / "status.json"
        self.control.write_text("")
        real = shutil.which("qemu-system-x86_64")
        assert real, "qemu-system-x86_64 is not installed"
        shim = tmp / "qemu"
        shim.write_text(f'#!/bin/sh\nexec /usr/bin/python3 {STAND_IN} {self.control} '
                        f'{self.status} {real} "$@"\n')  # fmt: skip
        shim.chmod(0o755)
        self.config = tmp / "config.toml"
        self.config.write_text(
            f'[vm]\ndriver = "qemu"\nqemu = "{shim}"\naccel = "tcg"\n'
            "[jail]\nenabled = false\n[template]\nenabled = false\n"
        )

    def read(self) -> dict:
        try:
            return json.loads(self.status.read_text())
        except (OSError, ValueError):
            return {"sent": {}, "procs": []}

    def send(self, line: str) -> None:
        self.control.write_text(line)

    def until(self, what: str, amount: int, watch, timeout: float = 60) -> None:
        """Until the stand-in sent ``amount`` bytes of ``what``, calling ``watch()`` meanwhile."""
        deadline = time.monotonic() + timeout
        while self.read()["sent"].get(what, 0) < amount:
            assert time.monotonic() < deadline, (what, self.read())
            watch()
            time.sleep(0.1)
        watch()
        self.send("")


def _answers(root: str, cid: str, env: dict) -> None:
    st = json.loads(hyperpy(root, "state", cid, env=env, timeout=60).stdout)
    assert st["status"] == "running", st
    res = hyperpy(root, "exec", cid, "echo", "still-here", env=env, timeout=60)
    assert (res.returncode, res.stdout) == (0, b"still-here\n"), res.stderr.decode()


def test_a_hostile_channel_is_bounded_and_an_oversize_frame_ends_the_pod(root, bundle, tmp_path):
    h = Hostile(tmp_path)
    env = dict(os.environ, HYPERPY_CONFIG=str(h.config))
    cid = "hostile1"
    d = os.path.join(root, cid)
    create_detached(root, bundle(["sleep", "1000"]), cid, tmp_path / "out", env)
    readers: list[subprocess.Popen] = []
    try:
        assert hyperpy(root, "start", cid, env=env).returncode == 0
        monitor = json.loads(open(os.path.join(d, "state.json")).read())["monitor_pid"]
        _answers(root, cid, env)
        base = _rss_kib(monitor)
        most = [base]

        def watch() -> None:
            most[0] = max(most[0], _rss_kib(monitor))

        # garbage and unasked-for messages: 32 MiB and 8 MiB (the reader holds one frame)
        for what, amount in (("garbage", 32 << 20), ("events", 8 << 20)):
            h.send(f"{what} {amount}")
            h.until(what, amount, watch)
            _answers(root, cid, env)
        assert most[0] - base < SLACK_KIB, (base, most[0])
        log = open(os.path.join(d, "monitor.log")).read()
        assert "(guest warning 1000)" in log, log[-2000:]  # counted, not each written
        assert os.path.getsize(os.path.join(d, "monitor.log")) <= DAEMON_LOG_MAX // 2 + 4096

        # a process's output, 8 times its bound, to a reader that does not read
        known = len(h.read()["procs"])
        reader = subprocess.Popen([HYPERPY, "--root", root, "exec", cid, "sleep", "1000"],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, env=env)  # fmt: skip
        readers.append(reader)
        deadline = time.monotonic() + 60
        while len(h.read()["procs"]) <= known:
            assert time.monotonic() < deadline and reader.poll() is None, h.read()
            time.sleep(0.1)
        proc = h.read()["procs"][-1]
        time.sleep(1)  # attached
        h.send(f"data {8 * OUTPUT_LIMIT} {proc}")
        h.until("data", 8 * OUTPUT_LIMIT, watch)
        assert most[0] - base < (OUTPUT_LIMIT >> 10) + SLACK_KIB, (base, most[0])
        assert "past flow control" in open(os.path.join(d, "monitor.log")).read()
        _answers(root, cid, env)

        # a guest that stops reading: the caller's stdin waits, the monitor holds little
        cat = subprocess.Popen([HYPERPY, "--root", root, "exec", cid, "cat"],
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env=env)  # fmt: skip
        readers.append(cat)
        known = len(h.read()["procs"])
        deadline = time.monotonic() + 60
        while len(h.read()["procs"]) <= known:
            assert time.monotonic() < deadline and cat.poll() is None, h.read()
            time.sleep(0.1)
        h.send("deaf")
        total, fed = 32 << 20, [0]

        def feed() -> None:
            assert cat.stdin is not None
            block = b"z" * 65536
            try:
                while fed[0] < total:
                    cat.stdin.write(block)
                    fed[0] += len(block)
                cat.stdin.close()
            except OSError:
                pass

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        time.sleep(1)
        before = base
        for _ in range(120):  # 12 s: longer than a client may take to finish a frame (10 s)
            time.sleep(0.1)
            watch()
        held = fed[0]
        assert held < total // 4, held  # the caller waits: it could not push it all
        assert most[0] - before < (OUTPUT_LIMIT >> 10) + SLACK_KIB, (before, most[0])
        st = json.loads(hyperpy(root, "state", cid, env=env, timeout=60).stdout)
        assert st["status"] == "running", st
        h.send("")  # hearing again: all of it goes through, and the pod answers
        feeder.join(120)
        assert not feeder.is_alive() and fed[0] == total
        assert cat.wait(120) == 0, cat.stderr.read().decode() if cat.stderr else ""
        _answers(root, cid, env)

        # an oversize frame: the pod ends, saying why
        h.send("oversize")
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(d, "exit.json")):
            assert time.monotonic() < deadline, open(os.path.join(d, "monitor.log")).read()
            time.sleep(0.1)
        exit_ = json.loads(open(os.path.join(d, "exit.json")).read())
        assert exit_["status"] == 255, exit_
        assert "broke the protocol" in exit_["reason"], exit_
        assert "4294967295 bytes exceeds the limit" in exit_["reason"], exit_
        st = json.loads(hyperpy(root, "state", cid, env=env, timeout=60).stdout)
        assert st["status"] == "stopped", st
        print(
            f"monitor RSS {base} KiB idle, at most {most[0]} KiB under the floods; "
            f"deaf guest: {held} of {total} bytes of stdin taken"
        )
    finally:
        for p in readers:
            if p.stdout is not None:
                p.stdout.close()  # the proxy's writes fail: it reads the monitor again
            if p.poll() is None:
                p.kill()
            p.wait(30)
        subprocess.run([HYPERPY, "--root", root, "delete", "--force", cid], env=env,
                       capture_output=True, timeout=60)  # fmt: skip
