"""The CLI without a VM: refused flags, errors reported, a corrupt record (flags: test_flags)."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import HYPERPY


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
    from hyperpy import entry
    from hyperpy.runtime import Runtime

    def broken(*_a, **_k):  # noqa: ANN202
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(Runtime, "state", broken)
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
    from hyperpy.sandbox.store import State, Store
    from hyperpy.verbs import create

    store = Store(str(tmp_path))
    d = store.make("c1")

    def broken(*_a):  # noqa: ANN202
        raise ProcessLookupError(3, "No such process")

    monkeypatch.setattr(create, "destroy", broken)
    with pytest.raises(VMError, match="the real reason"):
        try:
            raise VMError("the real reason")
        except BaseException:
            create.undo(store, d, State(id="c1", bundle=str(tmp_path), rootfs="", created=""))
            raise
    assert store.ids() == []  # the state went all the same
