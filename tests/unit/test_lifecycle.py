"""The status machine, the state store, and configuration parsing."""

import json
import subprocess
import threading

import pytest

from hyperpy import config
from hyperpy.errors import ConfigError, ContainerExists, InvalidState, UsageError
from hyperpy.sandbox import model
from hyperpy.sandbox.model import Status
from hyperpy.sandbox.store import State, Store
from tests.conftest import HYPERPY


@pytest.mark.parametrize(
    "op,status,ok",
    [
        ("start", Status.CREATED, True),
        ("start", Status.RUNNING, False),
        ("delete", Status.RUNNING, False),
        ("delete", Status.STOPPED, True),
        ("delete-force", Status.RUNNING, True),
        ("pause", Status.RUNNING, True),
        ("resume", Status.RUNNING, False),
        ("kill", Status.STOPPED, False),
    ],
)
def test_transitions(op, status, ok):
    if ok:
        model.check(op, status, "c1")
    else:
        with pytest.raises(InvalidState, match="c1"):
            model.check(op, status, "c1")


def test_effective_status():
    assert model.effective_status(Status.RUNNING, True, True) == Status.STOPPED
    assert model.effective_status(Status.RUNNING, False, False) == Status.STOPPED
    assert model.effective_status(Status.PAUSED, False, True) == Status.PAUSED


def test_store_roundtrip_and_atomic_create(tmp_path):
    store = Store(str(tmp_path))
    store.make("abc")
    store.save(State(id="abc", bundle="/b", rootfs="/b/rootfs", created="now"))
    assert store.load("abc").bundle == "/b"
    with pytest.raises(ContainerExists):
        store.make("abc")
    store.remove("abc")
    assert store.ids() == []


def test_concurrent_make_has_one_winner(tmp_path):
    store = Store(str(tmp_path))
    results = []

    def attempt():
        try:
            store.make("race")
            results.append("won")
        except ContainerExists:
            results.append("lost")

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["lost"] * 7 + ["won"]


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "-x", "x" * 200])
def test_bad_ids(tmp_path, bad):
    with pytest.raises(UsageError):
        Store(str(tmp_path)).dir(bad)


def test_config_rejects_unknown_keys_and_types(tmp_path):
    assert config.from_dict({"vm": {"memory_mb": 512}}).vm.memory_mb == 512
    with pytest.raises(ConfigError, match="unknown key 'memroy'"):
        config.from_dict({"vm": {"memroy": 1}})
    with pytest.raises(ConfigError, match="memory_mb must be int"):
        config.from_dict({"vm": {"memory_mb": "lots"}})
    with pytest.raises(ConfigError, match="accel must be one of"):
        config.from_dict({"vm": {"accel": "xen"}})
    with pytest.raises(ConfigError, match="unknown section"):
        config.from_dict({"networking": {}})


# containerd's runc shim (process/utils.go checkKillError, init.go delete) and go-runc decide
# by these phrases whether a container already exited or is gone; runc words them so.
@pytest.mark.parametrize(
    "op,status,phrase",
    [
        ("kill", Status.STOPPED, "container not running"),
        ("kill", Status.CREATING, "container not running"),
        ("start", Status.STOPPED, "cannot start a container that has stopped"),
        ("start", Status.RUNNING, "cannot start an already running container"),
        ("start", Status.PAUSED, "cannot start a container in the paused state"),
        ("delete", Status.RUNNING, "cannot delete container c1 that is not stopped: running"),
        ("exec", Status.STOPPED, "cannot exec in a stopped container"),
        ("exec", Status.PAUSED, "cannot exec in a paused container"),
        ("pause", Status.CREATED, "container not running"),
        ("resume", Status.RUNNING, "container not paused"),
        ("update", Status.STOPPED, "container not running"),
        ("events", Status.STOPPED, "container with id c1 is not running"),
    ],
)
def test_refusals_use_runcs_words(op, status, phrase):
    with pytest.raises(InvalidState) as err:
        model.check(op, status, "c1")
    assert phrase in str(err.value) and "c1" in str(err.value)


def stopped_container(root: str, cid: str) -> None:
    """A container whose monitor is gone: it reads as stopped."""
    store = Store(root)
    store.make(cid)
    store.save(State(id=cid, bundle="/b", rootfs="/b/rootfs", created="now", status="running"))


def test_kill_of_a_stopped_container_is_already_exited_and_all_is_a_no_op(tmp_path):
    from hyperpy.runtime import Runtime

    stopped_container(str(tmp_path), "gone1")
    rt = Runtime(str(tmp_path))
    assert rt.state("gone1")["status"] == "stopped"
    with pytest.raises(InvalidState, match="container not running"):
        rt.kill("gone1", 15)
    rt.kill("gone1", 9, all_=True)  # runc: --all on a stopped container succeeds


@pytest.mark.parametrize(
    "args",
    [["kill", "nope1"], ["delete", "nope1"], ["state", "nope1"], ["start", "nope1"],
     ["kill", "--all", "nope1", "KILL"]],
)  # fmt: skip
def test_a_missing_container_does_not_exist_in_runcs_words(tmp_path, args):
    res = subprocess.run([HYPERPY, "--root", str(tmp_path), *args], capture_output=True,
                         timeout=60)  # fmt: skip
    assert res.returncode == 4, res.stderr
    assert b"does not exist" in res.stderr


def test_kill_through_the_cli_with_a_json_log_as_the_shim_calls_it(tmp_path):
    root = str(tmp_path / "root")
    stopped_container(root, "gone2")
    log = tmp_path / "log.json"
    res = subprocess.run(
        [HYPERPY, "--root", root, "--log", str(log), "--log-format", "json", "kill", "gone2",
         "9"], capture_output=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 6
    # go-runc puts the command's output in the error the shim matches; the shim's
    # runtimeError reads the last error line of the log
    assert b"container not running" in res.stderr
    last = json.loads(log.read_text().splitlines()[-1])
    assert last["level"] == "error" and "container not running" in last["msg"]
    res = subprocess.run([HYPERPY, "--root", root, "kill", "--all", "gone2", "9"],
                         capture_output=True, timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stderr


def test_a_setup_process_that_dies_silently_is_described():
    """The agent's report when a container's setup process dies before a word (issue 9,
    item 7: memory.limit 1 used to give an empty message)."""
    import os

    from agent.container import Launch, died

    pid = os.fork()
    if pid == 0:
        os._exit(3)
    _, status = os.waitpid(pid, 0)
    msg, pointer = died(Launch({}), status)
    assert "exited with status 3" in msg and pointer == ""
    pid = os.fork()
    if pid == 0:
        os.kill(os.getpid(), 9)
    _, status = os.waitpid(pid, 0)
    assert "killed by signal 9" in died(Launch({}), status)[0]
    assert died(Launch({}))[0].endswith("died before it could report")
