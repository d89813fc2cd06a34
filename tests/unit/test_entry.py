"""The fast entry (hyperpy/entry.py): which calls it runs itself, and that it answers them
exactly as the click CLI does (output, --log lines, exit code); no VM needed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hyperpy import launcher
from hyperpy.entry import parse
from tests.conftest import HYPERPY

SHIM = ["--root", "/r", "--log", "/l.json", "--log-format", "json"]


@pytest.mark.parametrize(
    "argv",
    [
        [*SHIM, "state", "c1"],
        [*SHIM, "start", "c1"],
        [*SHIM, "kill", "c1", "9"],
        [*SHIM, "kill", "--all", "c1", "SIGKILL"],
        [*SHIM, "kill", "-a", "c1"],
        [*SHIM, "delete", "c1"],
        [*SHIM, "delete", "--force", "c1"],
        [*SHIM, "delete", "-f", "c1"],
        [*SHIM, "ps", "--format", "json", "c1"],
        [*SHIM, "ps", "--format=json", "c1"],
        [*SHIM, "ps", "-f", "json", "c1"],
        [*SHIM, "events", "--stats", "c1"],
        ["--root=/r", "--log=/l", "--log-format=text", "--systemd-cgroup", "state", "c1"],
        ["state", "c1"],
        [*SHIM, "kill", "c1", "--all"],  # click takes options after arguments too
    ],
)
def test_hot_calls_take_the_fast_path(argv):
    call = parse(argv)
    assert call is not None and call["args"][0] == "c1"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--help"],
        [*SHIM, "--help"],
        [*SHIM, "state", "--help"],
        [*SHIM, "state"],
        [*SHIM, "state", "c1", "c2"],
        [*SHIM, "--debug", "state", "c1"],
        [*SHIM[:-1], "yaml", "state", "c1"],
        ["--root"],
        [*SHIM, "kill", "c1", "TERM", "extra"],
        [*SHIM, "kill", "c1", "-9"],
        [*SHIM, "kill", "-af", "c1"],
        [*SHIM, "delete", "--force=1", "c1"],
        [*SHIM, "ps", "c1"],
        [*SHIM, "ps", "--format", "table", "c1"],
        [*SHIM, "ps", "-fjson", "c1"],
        [*SHIM, "ps", "--format"],
        [*SHIM, "events", "c1"],
        [*SHIM, "events", "--stats", "--interval", "1s", "c1"],
        [*SHIM, "state", "--", "c1"],
        [*SHIM, "list"],
        [*SHIM, "create", "--bundle", "b", "c1"],
        [*SHIM, "exec", "c1", "true"],
        [*SHIM, "pause", "c1"],
        ["-v"],
    ],
)
def test_anything_else_falls_back_to_click(argv):
    assert parse(argv) is None


def _fake(root, cid: str, status: str) -> None:
    """A state record without a VM: its monitor is gone, so it reads as stopped."""
    d = root / cid
    d.mkdir(parents=True)
    rec = {"id": cid, "bundle": "/b", "rootfs": "/b/rootfs", "created": "2024-01-01T00:00:00Z",
           "status": status, "pid": 4242, "monitor_pid": 0, "annotations": {"a": "b"}}  # fmt: skip
    (d / "state.json").write_text(json.dumps(rec))


def _call(argv: list[str], log) -> tuple:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    lines = log.read_text().splitlines() if log.exists() else None
    log.unlink(missing_ok=True)
    for i, line in enumerate(lines or []):  # without the time
        lines[i] = line.split("]", 1)[1] if not line.startswith("{") else json.loads(line)
        if isinstance(lines[i], dict):
            lines[i].pop("time")
    return res.returncode, res.stdout, res.stderr, lines


@pytest.mark.parametrize(
    "args",
    [
        ["state", "gone"],
        ["state", "bad/id"],
        ["state", "old"],
        ["start", "gone"],
        ["start", "old"],
        ["kill", "old", "KILL"],
        ["kill", "--all", "old", "KILL"],
        ["kill", "old", "NOPE"],
        ["kill", "gone"],
        ["delete", "gone"],
        ["delete", "--force", "gone"],
        ["ps", "--format", "json", "old"],
        ["ps", "--format", "json", "gone"],
        ["events", "--stats", "old"],
        ["delete", "old"],
    ],
)
@pytest.mark.parametrize("fmt", ["json", "text"])
def test_fast_path_answers_as_click_does(tmp_path, args, fmt):
    log = tmp_path / "log"
    outcomes = []
    for entry in ([HYPERPY], [sys.executable, "-m", "hyperpy.cli"]):
        root = tmp_path / entry[-1].replace("/", "_")
        _fake(root, "old", "created")
        glob = ["--root", str(root), "--log", str(log), "--log-format", fmt]
        rc, out, err, lines = _call([*entry, *glob, *args], log)
        outcomes.append((rc, out.replace(str(root), "R"), err.replace(str(root), "R"),
                         json.dumps(lines).replace(str(root), "R"),
                         sorted(p.name for p in root.iterdir())))  # fmt: skip
    assert outcomes[0] == outcomes[1]


def test_state_without_log_prints_the_error_on_stderr(tmp_path):
    fast = subprocess.run([HYPERPY, "--root", str(tmp_path), "state", "x"], capture_output=True)
    click = subprocess.run([sys.executable, "-m", "hyperpy.cli", "--root", str(tmp_path),
                            "state", "x"], capture_output=True)  # fmt: skip
    assert fast.returncode == click.returncode == 4
    strip = [line.split(b"]", 1)[1] for line in (fast.stderr, click.stderr)]  # after the time
    assert strip[0] == strip[1] and b"does not exist" in strip[0]


def test_launcher_starts_python_without_site(tmp_path):
    text = launcher.render("/venv/bin/python", "/src")
    assert text.startswith("#!/venv/bin/python -ES\n") and "sys.path.insert(0, '/src')" in text
    target = tmp_path / "hyperpy"
    launcher.write(str(target))
    res = subprocess.run([str(target), "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.startswith("hyperpy version")
