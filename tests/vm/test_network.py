"""The pod's network: a namespace the test makes on the host reaches the guest (real veths,
taps, tc redirects and traffic), and what must fail fails before a VM boots, leaving
nothing behind. Every interface lives in namespaces this test made."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.conftest import http_get_in, hyperpy, needs_artifacts, settled
from tests.vm.test_lifecycle import create, subreaper  # noqa: F401 - fixture

pytestmark = [pytest.mark.vm, needs_artifacts, pytest.mark.usefixtures("subreaper")]


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def in_ns(ns: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["nsenter", f"--net=/run/netns/{ns}", *argv], capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


class Net:
    """A pod namespace with eth0 (10.203.N.2/24, fd00:203:N::2/64, default route) whose
    veth peer sits in a client namespace at .1: the host side of the pod's network."""

    def __init__(self, n: int) -> None:
        tag = f"{os.getpid() % 10000}-{n}"
        self.pod, self.client = f"hp-pod-{tag}", f"hp-cli-{tag}"
        self.pod_ip, self.client_ip = f"10.203.{n}.2", f"10.203.{n}.1"
        self.pod_ip6 = f"fd00:203:{n}::2"
        for ns in (self.pod, self.client):
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("link", "add", "hpt-a", "netns", self.pod, "type", "veth", "peer", "name", "hpt-b",
           "netns", self.client)  # fmt: skip
        ip("-n", self.pod, "link", "set", "hpt-a", "name", "eth0")
        ip("-n", self.pod, "addr", "add", f"{self.pod_ip}/24", "dev", "eth0")
        ip("-n", self.pod, "addr", "add", f"{self.pod_ip6}/64", "dev", "eth0", "nodad")
        ip("-n", self.pod, "link", "set", "eth0", "up")
        ip("-n", self.pod, "route", "add", "default", "via", self.client_ip)
        ip("-n", self.client, "addr", "add", f"{self.client_ip}/24", "dev", "hpt-b")
        ip("-n", self.client, "addr", "add", f"fd00:203:{n}::1/64", "dev", "hpt-b", "nodad")
        ip("-n", self.client, "link", "set", "hpt-b", "up")
        self.mac = json.loads(ip("-n", self.pod, "-j", "link", "show", "eth0").stdout)[0]["address"]

    @property
    def path(self) -> str:
        return f"/run/netns/{self.pod}"

    def leftovers(self) -> list[str]:
        """Taps and qdiscs hyperpy would have left in the pod's namespace."""
        out = [line for line in ip("-n", self.pod, "-o", "link").stdout.splitlines()
               if "hptap" in line]  # fmt: skip
        tc = subprocess.run(["tc", "-n", self.pod, "qdisc", "show"], capture_output=True,
                            text=True, timeout=30).stdout  # fmt: skip
        out += [line for line in tc.splitlines() if "ingress" in line]
        return out

    def remove(self) -> None:
        for ns in (self.pod, self.client):
            ip("netns", "del", ns, check=False)


@pytest.fixture
def net():
    made: list[Net] = []

    def make() -> Net:
        made.append(Net(len(made) + 1))
        return made[-1]

    yield make
    for n in made:
        n.remove()


def netns_bundle(bundle, args, path: str | None = "", drop: bool = False) -> str:
    b = bundle(args)
    spec = json.load(open(f"{b}/config.json"))
    nss = spec["linux"]["namespaces"]
    if drop:
        spec["linux"]["namespaces"] = [ns for ns in nss if ns["type"] != "network"]
    for ns in nss:
        if ns["type"] == "network" and path:
            ns["path"] = path
    json.dump(spec, open(f"{b}/config.json", "w"))
    return b


HTTPD = (
    "mkdir -p /www && echo served-by-the-guest > /www/index.html && exec httpd -f -p 8080 -h /www"
)


@pytest.mark.usefixtures("driver")  # libvirt: taps handed to the paused domain
def test_a_namespace_path_brings_its_network_into_the_guest(root, bundle, net):
    n = net()
    b = netns_bundle(bundle, ["sh", "-c", HTTPD], n.path)
    create(root, b, "web")
    hyperpy(root, "start", "web", check=True)
    # real traffic from the host side of the pod's network to a server in the guest
    assert http_get_in(n.client, f"http://{n.pod_ip}:8080/") == "served-by-the-guest\n"
    # the guest's NIC is the veth's: name, MAC, addresses, routes
    link = hyperpy(root, "exec", "web", "ip", "-o", "addr", check=True).stdout.decode()
    assert f"inet {n.pod_ip}/24" in link, link
    assert f"inet6 {n.pod_ip6}/64" in link, link
    mac = hyperpy(root, "exec", "web", "cat", "/sys/class/net/eth0/address", check=True).stdout
    assert mac.decode().strip() == n.mac
    routes = hyperpy(root, "exec", "web", "ip", "route", check=True).stdout.decode()
    assert f"default via {n.client_ip} dev eth0" in routes, routes
    # the guest reaches the host side too; IPv6 reaches the guest
    ping = hyperpy(root, "exec", "--cap", "CAP_NET_RAW", "web", "ping", "-c", "1", "-W", "10",
                   n.client_ip)  # fmt: skip
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert http_get_in(n.client, f"http://[{n.pod_ip6}]:8080/") == "served-by-the-guest\n"
    # the host side kept its addresses; hyperpy's tap and redirects are there while it runs
    assert n.pod_ip in ip("-n", n.pod, "addr", "show", "eth0").stdout
    assert n.leftovers(), "no tap or redirect in the pod's namespace while it runs"
    hyperpy(root, "kill", "web", "KILL", check=True)
    hyperpy(root, "delete", "--force", "web", check=True)
    assert settled(n.leftovers) == []


def test_pod_members_share_the_network_and_localhost(root, bundle, net):
    n = net()
    sandbox = create(root, netns_bundle(bundle, ["sh", "-c", HTTPD], n.path), "pod")
    hyperpy(root, "start", "pod", check=True)
    b = netns_bundle(bundle, ["sleep", "1000"], f"/proc/{sandbox}/ns/net")
    spec = json.load(open(f"{b}/config.json"))
    spec["annotations"] = {"io.hyperpy.sandbox": "pod"}
    json.dump(spec, open(f"{b}/config.json", "w"))
    create(root, b, "side")
    hyperpy(root, "start", "side", check=True)
    deadline = time.monotonic() + 60
    while True:
        res = hyperpy(root, "exec", "side", "wget", "-qO-", "http://127.0.0.1:8080/")
        if res.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert res.stdout == b"served-by-the-guest\n", res.stderr
    for cid in ("side", "pod"):
        hyperpy(root, "delete", "--force", cid, check=True)
    assert settled(n.leftovers) == []


def test_a_new_namespace_without_hooks_has_only_loopback(root, bundle):
    res = hyperpy(root, "run", "--bundle", bundle(["ip", "-o", "link"]), "lo-only")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.decode().splitlines()
    assert len(lines) == 1 and ": lo:" in lines[0] and "UP" in lines[0], lines
    hyperpy(root, "delete", "lo-only")


def test_the_hosts_network_is_refused_before_a_vm_boots(root, bundle):
    b = netns_bundle(bundle, ["true"], drop=True)
    res = hyperpy(root, "run", "--bundle", b, "hostnet")
    assert res.returncode == 3
    err = res.stderr.decode()
    assert "/linux/namespaces" in err and "host's network" in err and "Traceback" not in err
    assert os.listdir(root) == []


@pytest.mark.parametrize("path", ["/run/netns/hp-no-such-ns", "/proc/self/ns/net", "/etc/hosts"])
def test_a_bad_namespace_path_is_refused_before_a_vm_boots(root, bundle, path):
    if path == "/proc/self/ns/net":
        path = f"/proc/{os.getpid()}/ns/net"  # the host's own namespace
    b = netns_bundle(bundle, ["true"], path)
    res = hyperpy(root, "run", "--bundle", b, "badpath")
    assert res.returncode == 3, res.stderr
    assert b"/linux/namespaces/1/path" in res.stderr and path.encode() in res.stderr
    assert os.listdir(root) == []


def test_more_interfaces_than_nics_fail_naming_the_interface(root, bundle, net):
    n = net()
    ip("-n", n.pod, "link", "add", "extra0", "type", "veth", "peer", "name", "extra1")
    res = hyperpy(root, "run", "--bundle", netns_bundle(bundle, ["true"], n.path), "toomany")
    assert res.returncode != 0
    err = res.stderr.decode()
    assert "extra" in err and "[network] interfaces" in err and "Traceback" not in err, err
    assert os.listdir(root) == []
    assert settled(n.leftovers) == []


def test_an_interface_that_cannot_be_redirected_is_named(root, bundle, net):
    n = net()
    ip("-n", n.pod, "tuntap", "add", "dev", "l3tun", "mode", "tun")
    res = hyperpy(root, "run", "--bundle", netns_bundle(bundle, ["true"], n.path), "l3")
    assert res.returncode != 0
    err = res.stderr.decode()
    assert "l3tun" in err and "not an Ethernet device" in err, err
    assert os.listdir(root) == []
    assert settled(n.leftovers) == []


def test_killing_the_vm_releases_its_tap_and_redirects(root, bundle, net):
    n = net()
    create(root, netns_bundle(bundle, ["sleep", "1000"], n.path), "victim")
    hyperpy(root, "start", "victim", check=True)
    assert n.leftovers()
    st = json.loads(open(os.path.join(root, "victim", "state.json")).read())
    os.kill(st["qemu_pid"], signal.SIGKILL)
    assert settled(n.leftovers) == []
    hyperpy(root, "delete", "--force", "victim", check=True)
