"""What the guest can make the host store is bounded (issue 21): a privileged container
(docker --privileged's config, from the corpus) floods the serial console from inside the
guest, and the pod's console log on the host stays under [vm] console_log_max_mb while the
pod keeps answering state and exec."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import HYPERPY, hyperpy, needs_artifacts
from tests.corpus import stand_ins

pytestmark = [pytest.mark.vm, needs_artifacts, pytest.mark.usefixtures("driver")]

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "data"
FLOOD = (
    "mknod /dev/flood-ttyS0 c 4 64 && echo flooding && "
    'exec yes "$(head -c 2000 /dev/zero | tr "\\0" A)" > /dev/flood-ttyS0'
)


def _log_bytes(d: str) -> int:
    return sum(os.path.getsize(os.path.join(d, n)) for n in ("console.log", "console.log.1")
               if os.path.exists(os.path.join(d, n)))  # fmt: skip


def flood_bundle(bundle, tmp_path: Path) -> Path:  # noqa: ANN001 - the fixture
    """A bundle of docker --privileged's config whose process floods the serial console."""
    rootfs = str(Path(bundle(["true"])) / "rootfs")
    spec = stand_ins(json.loads((CORPUS / "docker-privileged.json").read_text()), tmp_path,
                     rootfs)  # fmt: skip
    spec["process"].update(args=["sh", "-c", FLOOD], terminal=False)
    b = tmp_path / "bundle"
    b.mkdir()
    (b / "config.json").write_text(json.dumps(spec))
    return b


def create_detached(root: str, bundle: str, cid: str, out: Path, env: dict) -> None:
    """``create`` with the container's stdio on the file ``out`` (the proxy keeps it: not a
    pipe, whose reader would wait for it)."""
    with open(out, "wb") as f:
        res = subprocess.run([HYPERPY, "--root", root, "create", "--bundle", bundle, cid],
                             stdin=subprocess.DEVNULL, stdout=f, stderr=f, env=env,
                             timeout=180)  # fmt: skip
    assert res.returncode == 0, out.read_text()


def watch_ring(d: str, bound: int, pid: int = 0, turns: int = 6) -> tuple[int, int]:
    """Until the console log in state dir ``d`` has turned ``turns`` times (its bound passed
    turns/2 times over), checking it never holds more than ``bound`` (and one read): the
    most it held, and the most RSS of process ``pid`` meanwhile (KiB)."""
    rotations, seen, most, rss = 0, None, 0, 0
    deadline = time.monotonic() + 120
    while rotations < turns:
        assert time.monotonic() < deadline, f"only {rotations} rotations"
        try:
            ino = os.stat(os.path.join(d, "console.log.1")).st_ino
        except FileNotFoundError:
            ino = None
        if ino is not None and ino != seen:
            rotations, seen = rotations + 1, ino
        most = max(most, _log_bytes(d))
        rss = max(rss, _rss_kib(pid)) if pid else 0
        assert most <= bound + 65536, most  # one read's worth of slack
        time.sleep(0.05)
    return most, rss


def test_a_console_flood_stays_within_its_bound(root, bundle, tmp_path, vm_config, driver):
    bound = 1 << 20
    env = dict(os.environ, HYPERPY_CONFIG=vm_config(console_log_max_mb=1))
    b = flood_bundle(bundle, tmp_path)
    cid = "flood1"
    d = os.path.join(root, cid)
    create_detached(root, str(b), cid, tmp_path / "out", env)
    try:
        assert hyperpy(root, "start", cid, env=env).returncode == 0
        watch_ring(d, bound)
        # the pod answers meanwhile
        st = json.loads(hyperpy(root, "state", cid, env=env).stdout)
        assert st["status"] == "running"
        res = hyperpy(root, "exec", cid, "echo", "still-here", env=env, timeout=60)
        assert (res.returncode, res.stdout) == (0, b"still-here\n"), res.stderr.decode()
        assert b"A" * 2000 in open(os.path.join(d, "console.log"), "rb").read()
    finally:
        subprocess.run([HYPERPY, "--root", root, "delete", "--force", cid], env=env,
                       capture_output=True, timeout=60)  # fmt: skip


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_a_reader_that_stops_holds_the_process_not_the_host(root, bundle, tmp_path):
    """A container writes 200 MiB to a stdout nobody reads for a while: the proxy and the
    monitor stop taking it (the agent stops reading the process's pipe, which then blocks,
    as under runc), their memory stays flat, another exec still answers, and once read all
    of it arrives, in order."""
    size = 200 << 20
    b = bundle(["sh", "-c", f"head -c {size} /dev/zero; echo end"])
    p = subprocess.Popen([HYPERPY, "--root", root, "run", "--bundle", b, "slow1"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)  # fmt: skip
    try:
        d = os.path.join(root, "slow1")
        deadline = time.monotonic() + 120
        while True:
            raw = json.loads(open(os.path.join(d, "state.json")).read()) if os.path.exists(
                os.path.join(d, "state.json")) else {}  # fmt: skip
            if raw.get("pid") and raw.get("status") == "running":
                break
            assert time.monotonic() < deadline and p.poll() is None, p.stderr.read().decode()
            time.sleep(0.1)
        pids = {"proxy": raw["pid"], "monitor": raw["monitor_pid"]}
        time.sleep(2)
        base = {k: _rss_kib(v) for k, v in pids.items()}
        for _ in range(10):  # what would otherwise pile up: the guest writes ~10-30 MB/s
            time.sleep(1)
            for k, v in pids.items():
                assert _rss_kib(v) - base[k] < 24 << 10, (k, base[k], _rss_kib(v))
        res = hyperpy(root, "exec", "slow1", "echo", "still-here", timeout=60)
        assert (res.returncode, res.stdout) == (0, b"still-here\n"), res.stderr.decode()
        out = p.stdout.read()
        assert p.wait(60) == 0, p.stderr.read().decode()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    assert len(out) == size + 4 and out.endswith(b"\0end\n") and not out[:size].strip(b"\0")
