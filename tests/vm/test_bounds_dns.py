"""The DNS relay is bounded (issue 21): a container floods the pod's resolver on its
loopback (127.0.0.11, as docker's embedded DNS) from inside a real guest, first with a
server that answers, then with one that never does, and the monitor holds at most
``MAX_INFLIGHT`` queries (each its own socket) and flat memory while the guest sends many
times that; then the relay still answers, and so do state and exec. The resolver is a
stand-in in the pod's network namespace on the host, where docker's would be."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from hyperpy.dns_relay import MAX_INFLIGHT
from tests.conftest import HYPERPY, hyperpy, needs_artifacts
from tests.vm.test_bounds import _rss_kib
from tests.vm.test_lifecycle import create, subreaper  # noqa: F401 - fixture
from tests.vm.test_network import net, netns_bundle  # noqa: F401 - fixture

pytestmark = [pytest.mark.vm, needs_artifacts, pytest.mark.usefixtures("subreaper")]

FLOOD_C = r"""
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
int main(int argc, char **argv) {  /* flood ADDR PORT SECONDS: DNS queries, unread answers */
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &to.sin_addr);
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    unsigned char q[] = {0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0,
                         5, 'f', 'l', 'o', 'o', 'd', 4, 't', 'e', 's', 't', 0, 0, 1, 0, 1};
    time_t end = time(NULL) + atoi(argv[3]);
    long sent = 0;
    while (time(NULL) < end) {
        q[0] = sent >> 8, q[1] = sent;
        if (sendto(s, q, sizeof q, 0, (struct sockaddr *)&to, sizeof to) > 0) sent++;
    }
    printf("%ld\n", sent);
    return 0;
}
"""

# The pod's resolver: answers A queries with 192.0.2.7 while CONTROL says "answer", and
# nothing at all otherwise; STATUS counts what it received.
RESOLVER = r"""
import json, os, socket, sys, time
control, status = sys.argv[1:3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.11", 53))
s.settimeout(0.2)
got, answered, last = 0, 0, 0.0
while True:
    try:
        data, addr = s.recvfrom(4096)
        got += 1
        end = data.index(0, 12) + 5
        if open(control).read().strip() == "answer":
            a = data[end - 4:end - 2] == b"\0\1"
            head = data[:2] + b"\x81\x80\0\1" + (b"\0\1" if a else b"\0\0") + b"\0\0\0\0"
            rr = b"\xc0\x0c\0\1\0\1\0\0\0\x3c\0\4" + bytes([192, 0, 2, 7]) if a else b""
            s.sendto(head + data[12:end] + rr, addr)
            answered += 1
    except (socket.timeout, ValueError):
        pass
    if time.monotonic() - last > 0.2:
        last = time.monotonic()
        with open(status + ".tmp", "w") as f:
            json.dump({"got": got, "answered": answered}, f)
        os.rename(status + ".tmp", status)
"""


def _sockets(pid: int) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return n


def test_a_dns_flood_holds_at_most_its_bound_answered_or_not(root, bundle, net, tmp_path):  # noqa: F811 - the fixture imported above
    n = net()
    b = netns_bundle(bundle, ["sleep", "1000"], n.path)
    cc = tmp_path / "flood.c"
    cc.write_text(FLOOD_C)
    subprocess.run(["gcc", "-static", "-O2", "-o", f"{b}/rootfs/flood", str(cc)], check=True,
                   timeout=120)  # fmt: skip
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.11\n")
    spec = json.load(open(f"{b}/config.json"))
    spec["mounts"].append({"destination": "/etc/resolv.conf", "type": "bind",
                           "source": str(resolv), "options": ["rbind", "ro"]})  # fmt: skip
    json.dump(spec, open(f"{b}/config.json", "w"))
    control, status = tmp_path / "control", tmp_path / "status.json"
    control.write_text("answer")
    server = subprocess.Popen(["nsenter", f"--net={n.path}", sys.executable, "-c", RESOLVER,
                               str(control), str(status)])  # fmt: skip
    try:
        create(root, b, "dns1")
        hyperpy(root, "start", "dns1", check=True)
        monitor = json.loads(open(os.path.join(root, "dns1", "state.json")).read())["monitor_pid"]
        time.sleep(1)
        base_socks, base_rss = _sockets(monitor), _rss_kib(monitor)
        most_socks, most_rss = base_socks, base_rss
        seen = {}
        for mode, seconds in (("answer", 6), ("silent", 12)):  # silent: > 2 x the 5 s timeout
            control.write_text(mode)
            flood = subprocess.Popen([HYPERPY, "--root", root, "exec", "dns1", "/flood",
                                      "127.0.0.11", "53", str(seconds)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
            deadline = time.monotonic() + seconds + 90
            while flood.poll() is None:
                assert time.monotonic() < deadline, "the flood did not end"
                most_socks = max(most_socks, _sockets(monitor))
                most_rss = max(most_rss, _rss_kib(monitor))
                time.sleep(0.05)
            out, err = flood.communicate(timeout=30)
            assert flood.returncode == 0, err.decode()
            seen[mode] = int(out)
        # the guest asked many times what the relay holds; the monitor held no more
        assert min(seen.values()) > 10 * MAX_INFLIGHT, seen
        assert most_socks <= base_socks + MAX_INFLIGHT + 4, (base_socks, most_socks)
        assert most_rss - base_rss < 16 << 10, (base_rss, most_rss)
        got = json.loads(status.read_text())
        assert got["answered"] > 0, got  # the path was real: queries reached the resolver
        # the relay still answers, and so does the pod
        control.write_text("answer")
        time.sleep(6)  # the silent flood's last queries time out
        res = hyperpy(root, "exec", "dns1", "nslookup", "flood.test", "127.0.0.11", timeout=60)
        assert b"192.0.2.7" in res.stdout, res.stdout + res.stderr
        st = json.loads(hyperpy(root, "state", "dns1", timeout=60).stdout)
        assert st["status"] == "running", st
        res = hyperpy(root, "exec", "dns1", "echo", "still-here", timeout=60)
        assert (res.returncode, res.stdout) == (0, b"still-here\n"), res.stderr.decode()
        print(
            f"guest sent {seen} queries; monitor sockets {base_socks} idle, at most "
            f"{most_socks} (bound +{MAX_INFLIGHT}); RSS {base_rss} -> at most {most_rss} KiB; "
            f"resolver got {got}"
        )
    finally:
        server.kill()
        server.wait(10)
        hyperpy(root, "delete", "--force", "dns1", timeout=60)
