"""docker's networks on hyperpy: a dockerd (and its containerd) started inside a network
namespace this test makes, with its default bridge, iptables and published ports all in
there; real traffic from that namespace (the "host side") into the guests, between hyperpy
and runc containers, and docker's embedded DNS by name. Nothing touches the host's own
interfaces, routes or firewall."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import (
    HAVE_ARTIFACTS,
    http_get_in,
    kill_processes_under,
    own_netns,
    processes_under,
)
from tests.e2e.conftest import DOCKER_IMAGE, NS, Daemons, runtime_roots, state_left

pytestmark = pytest.mark.e2e

HYPERPY = ("--runtime", "hyperpy")
NETNS = f"hp-docker-{os.getpid()}"
HTTPD = "mkdir -p /www && echo {} > /www/index.html && exec httpd -f -p 80 -h /www"


@pytest.fixture(scope="module")
def netd():
    if not (HAVE_ARTIFACTS and shutil.which("dockerd") and shutil.which("nsenter")):
        pytest.skip("needs the kernel and initrd, docker.io and nsenter")
    from hyperpy.image import build

    with own_netns(NETNS):
        base = Path(tempfile.mkdtemp(prefix="hyperpy-e2e-net-"))
        d = Daemons(base, netns=NETNS, ns=f"{NS}-net")
        try:
            build(str(base / "busybox.tar"))
            d.start(str(base / "busybox.tar"))
            res = d.docker("network", "create", "--subnet", "172.31.251.0/24", "hpnet")
            assert res.returncode == 0, res.stderr.decode()
            yield d
        finally:
            d.stop()
            kill_processes_under(*runtime_roots(d))
            shutil.rmtree(base, ignore_errors=True)


def taps_left(d: Daemons) -> list[str]:
    """hyperpy's taps in the network namespaces docker still holds."""
    out = []
    for ns in Path(d.base, "docker-exec", "netns").glob("*"):
        res = subprocess.run(["nsenter", f"--net={ns}", "ip", "-o", "link"],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
        out += [f"{ns.name}: {line}" for line in res.stdout.splitlines() if "hptap" in line]
    return out


@pytest.fixture
def clean(netd):
    yield
    ids = netd.docker("ps", "-aq").stdout.decode().split()
    if ids:
        netd.docker("rm", "-f", *ids, timeout=180)
    deadline = time.monotonic() + 30
    left: list[str] = []
    while time.monotonic() < deadline:
        left = processes_under(*runtime_roots(netd)) + state_left(runtime_roots(netd))
        left += taps_left(netd)
        if not left:
            break
        time.sleep(0.3)
    assert not left, f"left behind: {left}"


def docker_ok(d: Daemons, *args: str, timeout: float = 180) -> str:
    res = d.docker(*args, timeout=timeout)
    assert res.returncode == 0, f"docker {args}: {res.stderr.decode()}"
    return res.stdout.decode()


def test_default_bridge_with_a_published_port(netd, clean):
    docker_ok(netd, "run", "-d", *HYPERPY, "-p", "8080:80", "--name", "pub", DOCKER_IMAGE,
              "sh", "-c", HTTPD.format("published"))  # fmt: skip
    ip = docker_ok(netd, "inspect", "-f", "{{.NetworkSettings.IPAddress}}", "pub").strip()
    assert ip.startswith("172.31.250."), ip
    assert http_get_in(NETNS, f"http://{ip}/") == "published\n"
    assert http_get_in(NETNS, "http://127.0.0.1:8080/") == "published\n"  # docker's port mapping


def test_user_defined_network_by_ip_and_name_with_runc_alongside(netd, clean):
    docker_ok(netd, "run", "-d", *HYPERPY, "--network", "hpnet", "--name", "web", DOCKER_IMAGE,
              "sh", "-c", HTTPD.format("from-hyperpy"))  # fmt: skip
    docker_ok(netd, "run", "-d", "--network", "hpnet", "--name", "rweb", DOCKER_IMAGE,
              "sh", "-c", HTTPD.format("from-runc"))  # fmt: skip
    ip = docker_ok(netd, "inspect", "-f", "{{.NetworkSettings.Networks.hpnet.IPAddress}}", "web")
    http_get_in(NETNS, f"http://{ip.strip()}/")  # the server is up
    # a hyperpy client: by IP, by name through docker's embedded DNS (127.0.0.11), and a
    # runc container by name
    out = docker_ok(netd, "run", "--rm", *HYPERPY, "--network", "hpnet", DOCKER_IMAGE, "sh",
                    "-c", f"wget -qO- http://{ip.strip()}/ && grep nameserver /etc/resolv.conf "
                    "&& wget -qO- http://web/ && wget -qO- http://rweb/")  # fmt: skip
    assert out.splitlines() == ["from-hyperpy", "nameserver 127.0.0.11", "from-hyperpy",
                                "from-runc"], out  # fmt: skip
    # a runc client reaches the hyperpy container by name
    out = docker_ok(netd, "run", "--rm", "--network", "hpnet", DOCKER_IMAGE, "wget", "-qO-",
                    "http://web/")  # fmt: skip
    assert out == "from-hyperpy\n"


def test_network_none_is_loopback_only(netd, clean):
    out = docker_ok(netd, "run", "--rm", *HYPERPY, "--network", "none", DOCKER_IMAGE, "ip", "-o",
                    "link")  # fmt: skip
    lines = out.splitlines()
    assert len(lines) == 1 and ": lo:" in lines[0], out


def test_network_container_joins_the_other_containers_vm(netd, clean):
    docker_ok(netd, "run", "-d", *HYPERPY, "--name", "base", DOCKER_IMAGE, "sh", "-c",
              HTTPD.format("shared-localhost"))  # fmt: skip
    ip = docker_ok(netd, "inspect", "-f", "{{.NetworkSettings.IPAddress}}", "base").strip()
    http_get_in(NETNS, f"http://{ip}/")
    out = docker_ok(
        netd,
        "run",
        "--rm",
        *HYPERPY,
        "--network",
        "container:base",
        DOCKER_IMAGE,
        "sh",
        "-c",
        "wget -qO- http://127.0.0.1/ && cat /proc/net/dev | grep -c eth0",
    )
    assert out.splitlines() == ["shared-localhost", "1"], out


def test_network_container_after_a_published_port(netd, clean):
    """issue 23 item 6: the first container publishes a port on the default bridge; a second
    joins its network, fetches from 127.0.0.1, and the port stays reachable."""
    docker_ok(netd, "run", "-d", *HYPERPY, "-p", "18080:80", "--name", "pubbase", DOCKER_IMAGE,
              "sh", "-c", HTTPD.format("published-base"))  # fmt: skip
    assert http_get_in(NETNS, "http://127.0.0.1:18080/") == "published-base\n"
    out = docker_ok(netd, "run", "--rm", *HYPERPY, "--network", "container:pubbase",
                    DOCKER_IMAGE, "wget", "-qO-", "http://127.0.0.1/")  # fmt: skip
    assert out == "published-base\n", out
    assert http_get_in(NETNS, "http://127.0.0.1:18080/") == "published-base\n"
