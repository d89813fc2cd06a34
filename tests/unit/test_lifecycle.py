"""The status machine, the state store, and configuration parsing."""

import threading

import pytest

from hyperpy import config
from hyperpy.errors import ConfigError, ContainerExists, InvalidState, UsageError
from hyperpy.sandbox import model
from hyperpy.sandbox.model import Status
from hyperpy.sandbox.store import State, Store


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
        config.from_dict({"network": {}})
