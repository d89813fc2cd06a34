"""Capabilities applied for real in a forked child (as root), which reports its own
/proc/self/status, or execs cat to show what a container process would get."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

import pytest

from agent import caps
from agent.errors import SetupError
from agent.tables import CAPS

NET_BIND = 1 << CAPS["CAP_NET_BIND_SERVICE"]
NET_RAW = 1 << CAPS["CAP_NET_RAW"]
BPF = 1 << CAPS["CAP_BPF"]
CAT = shutil.which("cat") or "/bin/cat"
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def status(text: str) -> dict[str, int]:
    """Cap* masks and the real uid from a /proc/<pid>/status text."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Cap"):
            out[key] = int(value, 16)
        elif key == "Uid":
            out[key] = int(value.split()[0])
    return out


def own_status() -> dict[str, int]:
    with open("/proc/self/status") as f:
        return status(f.read())


def names(mask: int) -> list[str]:
    return [name for name, num in CAPS.items() if mask & (1 << num)]


def in_child(setup: Callable[[], None], exec_cat: bool = False) -> dict[str, int]:
    """Run ``setup`` in a forked child; the child's status after it (or, with ``exec_cat``,
    that of the program it then execs).  A SetupError comes back as {"pointer": ...}."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            try:
                setup()
            except SetupError as exc:
                os.write(w, f"pointer:{exc.pointer}\n".encode())
                os._exit(0)
            if exec_cat:
                os.dup2(w, 1)
                os.execv(CAT, ["cat", "/proc/self/status"])
            with open("/proc/self/status") as f:
                os.write(w, f.read().encode())
        finally:
            os._exit(1)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    text = data.decode()
    if text.startswith("pointer:"):
        return {"pointer": text.split(":", 1)[1].strip()}  # type: ignore[dict-item]
    return status(text)


def as_user(uid: int) -> Callable[[], None]:
    def switch() -> None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)

    return switch


def test_table_is_0_to_40():
    assert sorted(CAPS.values()) == list(range(41))
    assert CAPS["CAP_CHOWN"] == 0 and CAPS["CAP_CHECKPOINT_RESTORE"] == 40


def test_parse_and_unknown_names():
    assert caps.parse(["CAP_CHOWN", "CAP_KILL", "CAP_BPF"]) == 1 | 1 << 5 | 1 << 39
    # unknown names are ignored, as runc ignores them ("unknown or unavailable")
    m = caps.masks({"effective": ["CAP_KILL"], "bounding": ["CAP_CHOWN", "CAP_NOPE", "NET_RAW"]})
    assert m["bounding"] == 1 << 0 and m["effective"] == 1 << 5
    assert caps.masks(None) == dict.fromkeys(caps.SETS, 0)


@root_only
def test_bounding_set_without_net_raw_as_root():
    before = own_status()
    spec = {
        "bounding": names(before["CapBnd"] & ~NET_RAW),
        "effective": names(before["CapEff"]),
        "permitted": names(before["CapPrm"]),
    }
    got = in_child(lambda: caps.apply(spec))
    assert got["CapBnd"] == before["CapBnd"] & ~NET_RAW
    assert got["CapEff"] == before["CapEff"] and got["CapPrm"] == before["CapPrm"]
    assert got["CapInh"] == got["CapAmb"] == 0 and got["Uid"] == 0


@root_only
def test_permitted_survives_the_switch_to_uid_1000():
    spec = {
        "bounding": ["CAP_NET_BIND_SERVICE", "CAP_BPF"],
        "effective": ["CAP_NET_BIND_SERVICE", "CAP_BPF"],  # CAP_BPF: the high 32-bit word
        "permitted": ["CAP_NET_BIND_SERVICE", "CAP_BPF"],
    }
    got = in_child(lambda: caps.apply(spec, switch_user=as_user(1000)))
    assert got["Uid"] == 1000
    assert got["CapEff"] == got["CapPrm"] == got["CapBnd"] == NET_BIND | BPF
    assert got["CapInh"] == got["CapAmb"] == 0
    # without ambient capabilities, a non-root exec loses them all
    execd = in_child(lambda: caps.apply(spec, switch_user=as_user(1000)), exec_cat=True)
    assert execd["Uid"] == 1000 and execd["CapEff"] == execd["CapPrm"] == 0


@root_only
def test_ambient_capabilities_reach_the_execd_program():
    spec = dict.fromkeys(caps.SETS, ["CAP_NET_BIND_SERVICE"])
    got = in_child(lambda: caps.apply(spec, switch_user=as_user(1000)))
    assert got["CapAmb"] == got["CapInh"] == got["CapEff"] == NET_BIND
    execd = in_child(lambda: caps.apply(spec, switch_user=as_user(1000)), exec_cat=True)
    assert execd["Uid"] == 1000
    assert execd["CapEff"] == execd["CapPrm"] == execd["CapAmb"] == NET_BIND


@root_only
def test_no_capabilities_object_means_none_at_all():
    got = in_child(lambda: caps.apply(None), exec_cat=True)
    assert got["Uid"] == 0  # even root gets nothing: the bounding set is empty
    assert got["CapBnd"] == got["CapEff"] == got["CapPrm"] == got["CapInh"] == 0


@root_only
def test_the_two_calls_around_a_hand_made_uid_switch():
    m = caps.masks({"permitted": ["CAP_KILL"], "effective": ["CAP_KILL"], "bounding": ["CAP_KILL"]})

    def setup() -> None:
        caps.before_setuid(m, caps.last_cap())
        as_user(1000)()
        caps.after_setuid(m)

    got = in_child(setup)
    assert got["CapEff"] == got["CapPrm"] == got["CapBnd"] == 1 << CAPS["CAP_KILL"]


@root_only
def test_impossible_sets_name_the_field():
    # effective outside permitted: capset refuses
    spec = {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"]}
    assert in_child(lambda: caps.apply(spec, switch_user=as_user(1000))) == {
        "pointer": "/process/capabilities"
    }
    # ambient needs permitted and inheritable
    spec = {"bounding": ["CAP_KILL"], "permitted": ["CAP_KILL"], "ambient": ["CAP_KILL"]}
    assert in_child(lambda: caps.apply(spec, switch_user=as_user(1000))) == {
        "pointer": "/process/capabilities/ambient"
    }
