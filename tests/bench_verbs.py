"""The hot verbs against runc: what each call the shim makes costs, hyperpy beside runc.

containerd's runc shim runs ``RUNTIME --root R --log L --log-format json VERB ...`` for every
state, start, kill, delete, ps and stats of every container it manages; those calls are
timed here, the way the shim makes them, on a real container of each runtime (a hyperpy
container is a VM: one at a time):

* ``state`` of a created container;
* ``start`` (one sample per container);
* ``ps --format json``, ``events --stats`` and ``kill ID TERM`` of a running container
  whose process ignores SIGTERM (so that it keeps running);
* ``delete`` of a stopped container (one sample per container).

Wall time of the whole call (fork, exec, interpreter start, the work), medians.

    python -m tests.bench_verbs [--calls N] [--containers K]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HYPERPY = os.path.join(os.path.dirname(sys.executable), "hyperpy")
VERBS = ("state", "start", "ps", "events", "kill", "delete")
# SIG_IGN survives exec: the container's process keeps running through `kill ID TERM`.
ARGS = ["sh", "-c", "trap '' TERM; exec sleep 100000"]


class _Runtime:
    def __init__(self, binary: str, root: str) -> None:
        self.root = root
        self.argv = [binary, "--root", root, "--log", root + ".log", "--log-format", "json"]

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run([*self.argv, *args], capture_output=True, timeout=timeout)

    def timed(self, *args: str) -> float:
        start = time.perf_counter()
        res = self.run(*args)
        took = time.perf_counter() - start
        if res.returncode != 0:
            raise SystemExit(f"{' '.join(self.argv + list(args))} failed: {res.stderr!r}")
        return took

    def create(self, bundle: str, cid: str, work: str) -> None:
        # The container's stdio outlives create (hyperpy's proxy, runc's init): a file.
        with open(os.path.join(work, f"{cid}.out"), "wb") as out:
            res = subprocess.run(
                [*self.argv, "create", "--bundle", bundle, cid],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                timeout=300,
            )
        if res.returncode != 0:
            with open(out.name, "rb") as f:
                raise SystemExit(f"{self.argv[0]} create failed: {f.read()[-800:]!r}")

    def wait_stopped(self, cid: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b'"stopped"' in self.run("state", cid).stdout:
                return
            time.sleep(0.05)
        raise SystemExit(f"{self.argv[0]}: {cid} did not stop within {timeout:.0f}s")


def _samples(rt: _Runtime, bundle: str, work: str, n: int, containers: int) -> dict[str, float]:
    """Median seconds per verb; ``containers`` made one after the other."""
    per = math.ceil(n / containers)
    got: dict[str, list[float]] = {v: [] for v in VERBS}
    for i in range(containers):
        cid = f"bench-verbs-{os.getpid()}-{i}"
        rt.create(bundle, cid, work)
        try:
            got["state"] += [rt.timed("state", cid) for _ in range(per)]
            got["start"].append(rt.timed("start", cid))
            got["ps"] += [rt.timed("ps", "--format", "json", cid) for _ in range(per)]
            got["events"] += [rt.timed("events", "--stats", cid) for _ in range(per)]
            got["kill"] += [rt.timed("kill", cid, "TERM") for _ in range(per)]
            rt.timed("kill", cid, "KILL")
            rt.wait_stopped(cid)
            got["delete"].append(rt.timed("delete", cid))
        finally:
            rt.run("delete", "--force", cid)
    return {v: statistics.median(s) for v, s in got.items()}


def measure(tmp: str, n: int, containers: int = 3) -> dict[str, tuple[float, float]]:
    """verb -> (hyperpy median seconds, runc median seconds), ``n`` calls of each (start and
    delete: one per container)."""
    from hyperpy.bundle import make_bundle

    runc = shutil.which("runc")
    if runc is None:
        raise SystemExit("runc is not installed (apt-get install runc)")
    bundle = os.path.join(tmp, "bundle")
    os.makedirs(bundle, exist_ok=True)
    make_bundle(bundle, ARGS)
    hp = _samples(_Runtime(HYPERPY, os.path.join(tmp, "hyperpy")), bundle, tmp, n, containers)
    rc = _samples(_Runtime(runc, os.path.join(tmp, "runc")), bundle, tmp, n, containers)
    return {v: (hp[v], rc[v]) for v in VERBS}


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bench_verbs")
    ap.add_argument("--calls", type=int, default=30, help="calls of each verb")
    ap.add_argument("--containers", type=int, default=3, help="containers of each runtime")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="hyperpy-bench-verbs-")
    try:
        result = measure(work, args.calls, args.containers)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("verb hyperpy_ms runc_ms ratio")
    for verb, (hp, rc) in result.items():
        print(f"{verb} {hp * 1000:.1f} {rc * 1000:.1f} {hp / rc:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
