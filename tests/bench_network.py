"""The network part of `make bench`: TCP into a container through hyperpy and through runc.

One setup for both, side by side in one run: per runtime a pod network namespace with a veth
whose peer is in a client namespace (as the tests make them), the same busybox bundle with
its network namespace path set to the pod's, a busybox ``nc`` sink and ``httpd`` in the
container. From the client namespace (the host side) a Python client measures

* throughput: MiB/s of ``--mib`` MiB pushed over one TCP connection into ``nc -l``
  (until the server has read it all and closed);
* request latency: the median of ``--requests`` HTTP GETs, each a new TCP connection.

Under TCG the guest's CPU is emulated: every packet costs guest instructions translated at
run time, and virtio-net has no vhost and no offloads here, so hyperpy's figures are bounded
by emulation, not by the tc redirect.

    python -m tests.bench_network [--mib N] [--requests N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HYPERPY = os.path.join(os.path.dirname(sys.executable), "hyperpy")
SERVER = (
    "mkdir -p /www && echo ok > /www/index.html && httpd -p 8080 -h /www && "
    "while true; do nc -l -p 5001 > /dev/null; done"
)
CLIENT = r"""
import socket, statistics, sys, time
ip, mib, requests = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
deadline = time.monotonic() + 120
while True:  # wait for the servers
    try:
        socket.create_connection((ip, 8080), timeout=5).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
lat = []
for _ in range(requests):
    t = time.monotonic()
    with socket.create_connection((ip, 8080), timeout=30) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        while s.recv(65536):
            pass
    lat.append((time.monotonic() - t) * 1000)
chunk = b"\0" * (1 << 16)
time.sleep(0.5)
with socket.create_connection((ip, 5001), timeout=60) as s:
    t = time.monotonic()
    for _ in range(mib * 16):
        s.sendall(chunk)
    s.shutdown(socket.SHUT_WR)
    while s.recv(65536):
        pass
    took = time.monotonic() - t
print(f"{mib / took:.2f} {statistics.median(lat):.2f}")
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _namespaces(tag: str, n: int) -> tuple[str, str, str]:
    pod, client = f"hpb-pod-{tag}", f"hpb-cli-{tag}"
    for ns in (pod, client):
        _ip("netns", "add", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
    _ip("link", "add", "hpb-a", "netns", pod, "type", "veth", "peer", "name", "hpb-b",
        "netns", client)  # fmt: skip
    _ip("-n", pod, "link", "set", "hpb-a", "name", "eth0")
    _ip("-n", pod, "addr", "add", f"10.204.{n}.2/24", "dev", "eth0")
    _ip("-n", pod, "link", "set", "eth0", "up")
    _ip("-n", client, "addr", "add", f"10.204.{n}.1/24", "dev", "hpb-b")
    _ip("-n", client, "link", "set", "hpb-b", "up")
    return pod, client, f"10.204.{n}.2"


def _bundle(path: str, netns: str) -> None:
    from hyperpy.bundle import make_bundle

    os.makedirs(path)
    make_bundle(path, ["sh", "-c", SERVER])
    with open(f"{path}/config.json") as f:
        spec = json.load(f)
    for ns in spec["linux"]["namespaces"]:
        if ns["type"] == "network":
            ns["path"] = f"/run/netns/{netns}"
    spec["process"]["terminal"] = False
    with open(f"{path}/config.json", "w") as f:
        json.dump(spec, f)


def measure(runtime: list[str], work: str, n: int, mib: int, requests: int) -> tuple[float, float]:
    """(MiB/s, median request ms) into a container of ``runtime`` (argv with its --root)."""
    tag = f"{os.getpid() % 10000}-{n}"
    pod, client, ip = _namespaces(tag, n)
    cid = f"bench-net-{n}"
    try:
        bundle = os.path.join(work, f"net-bundle-{n}")
        _bundle(bundle, pod)
        # no pipe: the container's stdio would hold it open
        with open(os.path.join(work, f"{cid}.log"), "wb") as log:
            res = subprocess.run([*runtime, "run", "-d", "--bundle", bundle, cid],
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                 timeout=180)  # fmt: skip
        if res.returncode != 0:
            raise SystemExit(f"{runtime[0]} run failed: {open(log.name).read()[-800:]}")
        res = subprocess.run(
            ["nsenter", f"--net=/run/netns/{client}", sys.executable, "-c", CLIENT, ip,
             str(mib), str(requests)], capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if res.returncode != 0:
            raise SystemExit(f"network bench client failed: {res.stderr[-800:]}")
        mibs, ms = res.stdout.split()
        if runtime[0] == HYPERPY:
            with open(os.path.join(runtime[2], cid, "monitor.log")) as f:
                wired = [line.split("monitor: ", 1)[-1].strip() for line in f if " wired " in line]
            print(f"  hyperpy's plumbing at create: {wired[-1] if wired else '?'}")
        return float(mibs), float(ms)
    finally:
        subprocess.run([*runtime, "delete", "--force", cid], capture_output=True, timeout=120)
        for ns in (pod, client):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def report(work: str, mib: int = 32, requests: int = 30) -> None:
    runc = shutil.which("runc")
    print("\nnetwork, host side -> container (TCP, one setup, veth + the runtime's plumbing)")
    hp = measure([HYPERPY, "--root", os.path.join(work, "net-hyperpy")], work, 1, mib, requests)
    if runc is None:
        print(f"  hyperpy: {hp[0]:.1f} MiB/s, {hp[1]:.2f} ms per request (runc not installed)")
        return
    rc = measure([runc, "--root", os.path.join(work, "net-runc")], work, 2, mib, requests)
    print("                                   hyperpy      runc   hyperpy/runc")
    print(f"  throughput (MiB/s, {mib} MiB)     {hp[0]:9.1f} {rc[0]:9.1f}   {hp[0] / rc[0]:9.3f}")
    print(f"  request latency (ms, median)    {hp[1]:9.2f} {rc[1]:9.2f}   {hp[1] / rc[1]:9.1f}x")
    print("  (TCG: the guest's network stack runs emulated; virtio-net without vhost/offloads)")


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bench_network")
    ap.add_argument("--mib", type=int, default=32)
    ap.add_argument("--requests", type=int, default=30)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="hyperpy-bench-net-")
    try:
        start = time.monotonic()
        report(work, args.mib, args.requests)
        print(f"  ({time.monotonic() - start:.0f} s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
