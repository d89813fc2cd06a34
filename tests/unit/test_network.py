"""The pod network's pure parts: which namespace a spec names, which routes the guest gets,
which resolvers are relayed and how the relay bounds what the guest sends."""

from __future__ import annotations

import base64
import os
import socket

import pytest

from agent import protocol as P
from hyperpy import config, network
from hyperpy.dns_relay import MAX_INFLIGHT, Relay, loopback_nameservers
from hyperpy.errors import ConfigError, SpecError


def spec_with(*namespaces: dict) -> dict:
    return {"linux": {"namespaces": list(namespaces)}}


def test_a_new_network_namespace_is_made_by_the_monitor():
    spec = spec_with({"type": "pid"}, {"type": "network"})
    assert network.plan(spec) == (spec, "")


def test_no_network_namespace_is_the_hosts_network_and_refused():
    with pytest.raises(SpecError, match="host's network") as exc:
        network.plan(spec_with({"type": "pid"}))
    assert exc.value.pointer == "/linux/namespaces"


@pytest.mark.parametrize(
    "path,words",
    [
        ("/run/netns/hyperpy-unit-no-such", "cannot be opened"),
        (os.path.abspath(__file__), "not a network namespace"),  # a file that always exists
        ("/proc/self/ns/net", "host's own network namespace"),
    ],
)
def test_bad_namespace_paths_name_the_field(path, words):
    with pytest.raises(SpecError, match=words) as exc:
        network.plan(spec_with({"type": "pid"}, {"type": "network", "path": path}))
    assert exc.value.pointer == "/linux/namespaces/1/path"


class Msg(dict):
    """The shape of a pyroute2 message: fields by key, attributes by get_attr."""

    def __init__(self, attrs: dict, **fields: object) -> None:
        super().__init__(fields)
        self.attrs = attrs

    def get_attr(self, name: str) -> object:
        return self.attrs.get(name)


def route(dst: str | None, dst_len: int, oif: int, proto: int = 4, family: int = socket.AF_INET,
          **attrs: object) -> Msg:  # fmt: skip
    a = {"RTA_OIF": oif, **({"RTA_DST": dst} if dst else {}), **attrs}
    return Msg(a, family=family, dst_len=dst_len, proto=proto, type=1, scope=0)


def test_guest_routes_skip_kernel_link_local_and_other_interfaces():
    routes = [
        route(None, 0, 2, RTA_GATEWAY="10.0.0.1"),  # default via the gateway
        route("10.0.0.0", 24, 2, proto=2),  # made by the kernel from the address
        route("192.168.5.0", 24, 2),  # a device route
        route("172.16.0.0", 12, 9, RTA_GATEWAY="10.0.0.1"),  # another interface
        route("fe80::", 64, 2, family=socket.AF_INET6),  # IPv6 link-local
        route(None, 0, 2, family=socket.AF_INET6, RTA_GATEWAY="fd00::1", RTA_PRIORITY=1024),
    ]
    out = network.guest_routes(routes, {2: "eth0"})
    assert out == [
        {"dst": "192.168.5.0/24", "dev": "eth0", "family": 4, "scope": 0},
        {"dst": "0.0.0.0/0", "dev": "eth0", "family": 4, "scope": 0, "gateway": "10.0.0.1"},
        {"dst": "::/0", "dev": "eth0", "family": 6, "scope": 0, "gateway": "fd00::1",
         "metric": 1024},
    ]  # fmt: skip


def test_only_loopback_resolvers_are_relayed(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("search x\nnameserver 127.0.0.11\nnameserver 10.0.0.2\nnameserver ::1\n"
                    "nameserver 127.0.0.11\nnameserver bogus\noptions ndots:0\n")  # fmt: skip
    assert loopback_nameservers(str(conf)) == ["127.0.0.11"]
    assert loopback_nameservers(str(tmp_path / "missing")) == []


def test_the_relay_asks_only_its_servers_and_bounds_the_guest():
    async def answer(q: int, data: str) -> None:
        pass

    relay = Relay(["127.0.0.11"], answer)
    query = base64.b64encode(b"\x12\x34" + b"\0" * 10).decode()
    assert relay.query({"q": 1, "server": "10.0.0.2", "data": query}) is None  # not ours
    assert relay.query({"q": 1, "server": "127.0.0.11", "data": "!!"}) is None  # not base64
    big = base64.b64encode(b"\0" * 8192).decode()
    assert relay.query({"q": 1, "server": "127.0.0.11", "data": big}) is None
    assert relay.query({"q": "1", "server": "127.0.0.11", "data": query}) is None
    coros = [relay.query({"q": i, "server": "127.0.0.11", "data": query})
             for i in range(MAX_INFLIGHT + 5)]  # fmt: skip
    assert sum(c is not None for c in coros) == MAX_INFLIGHT
    for c in coros:
        if c is not None:
            c.close()  # type: ignore[attr-defined]


def test_network_requests_are_checked_field_by_field():
    ok = {"id": 1, "op": P.OP_NETWORK, "cid": "c", "interfaces": [], "routes": [],
          "neighbors": []}  # fmt: skip
    P.check_fields(ok)
    with pytest.raises(P.ProtocolError, match="'routes' must be list"):
        P.check_fields({**ok, "routes": {}})
    with pytest.raises(P.ProtocolError, match="'data' is missing"):
        P.check_fields({"id": 2, "op": P.OP_DNS_REPLY, "q": 1})


def test_network_config_bounds_the_planned_nics():
    assert config.from_dict({"network": {"interfaces": 2}}).network.interfaces == 2
    with pytest.raises(ConfigError, match="interfaces must be from 1 to 8"):
        config.from_dict({"network": {"interfaces": 9}})
