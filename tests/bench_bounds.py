"""`make bench`, the bounds' part (issue 21): what a guest flooding its console costs the host.

Two pods side by side for ``SECONDS``: one idle (``sleep``), one privileged (docker
``--privileged``'s config from the corpus) writing its serial console as fast as it can.
Printed: the host memory (RSS) of each pod's QEMU and monitor, the console log's size on
the host against its bound, and the bytes that went through it. And the cold start with the
guest kernel's whole boot log on the console (``verbose_console``) beside the default
(``quiet``): an upper bound of what carrying the console costs a start.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HYPERPY = os.path.join(os.path.dirname(sys.executable), "hyperpy")
SECONDS = 20
BOUND_MB = 4
FLOOD = ("mknod /dev/flood-ttyS0 c 4 64 && "
         'exec yes "$(head -c 2000 /dev/zero | tr "\\0" A)" > /dev/flood-ttyS0')  # fmt: skip


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def _start(root: str, bundle: str, cid: str, env: dict) -> dict:
    for verb in ("create", "start"):
        argv = [HYPERPY, "--root", root, verb, *(["--bundle", bundle] if verb == "create" else []),
                cid]  # fmt: skip
        res = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=env, timeout=180)  # fmt: skip
        if res.returncode != 0:
            raise SystemExit(f"bench: hyperpy {verb} {cid} failed ({res.returncode})")
    with open(os.path.join(root, cid, "state.json")) as f:
        return json.load(f)


def _flood_bundle(work: str) -> str:
    from hyperpy.bundle import make_bundle
    from tests.corpus import stand_ins

    base = Path(work) / "flood"
    rootfs = base / "b0"
    rootfs.mkdir(parents=True)
    make_bundle(str(rootfs), ["true"])
    data = Path(__file__).resolve().parent / "corpus" / "data" / "docker-privileged.json"
    spec = stand_ins(json.loads(data.read_text()), base, str(rootfs / "rootfs"))
    spec["process"].update(args=["sh", "-c", FLOOD], terminal=False)
    (base / "bundle").mkdir()
    (base / "bundle" / "config.json").write_text(json.dumps(spec))
    return str(base / "bundle")


def report_flood(work: str, idle_bundle: str) -> tuple[float, float]:
    """(extra QEMU RSS of the flooding pod over the idle one in MiB, console MiB on disk)."""
    cfg = os.path.join(work, "bounds.toml")
    with open(cfg, "w") as f:
        f.write(f"[vm]\nconsole_log_max_mb = {BOUND_MB}\n")
    env = dict(os.environ, HYPERPY_CONFIG=cfg)
    root = os.path.join(work, "bounds-root")
    pods = {"idle": _start(root, idle_bundle, "idle", env),
            "flood": _start(root, _flood_bundle(work), "flood", env)}  # fmt: skip
    rotations, seen, most = 0, None, 0
    log = os.path.join(root, "flood", "console.log")
    deadline = time.monotonic() + SECONDS
    try:
        while time.monotonic() < deadline:
            try:
                ino = os.stat(log + ".1").st_ino
                rotations, seen = (rotations + 1, ino) if ino != seen else (rotations, seen)
            except FileNotFoundError:
                pass
            size = sum(os.path.getsize(p) for p in (log, log + ".1") if os.path.exists(p))
            most = max(most, size)
            time.sleep(0.05)
        rss = {k: (_rss_mib(v["qemu_pid"]), _rss_mib(v["monitor_pid"])) for k, v in pods.items()}
    finally:
        for cid in pods:
            subprocess.run([HYPERPY, "--root", root, "delete", "--force", cid], env=env,
                           capture_output=True, timeout=60)  # fmt: skip
    through = rotations * BOUND_MB / 2 + most / 2**20  # at least: each turn is half the bound
    print(f"\na console flood for {SECONDS} s (privileged container writing /dev/ttyS0), "
          f"bound {BOUND_MB} MiB")  # fmt: skip
    print("                                  QEMU RSS MiB   monitor RSS MiB")
    for k, (q, m) in rss.items():
        print(f"  {k + ' pod':<32}{q:12.1f}{m:18.1f}")
    print(f"  console log on the host: at most {most / 2**20:.2f} MiB (bound {BOUND_MB} MiB); "
          f"at least {through:.1f} MiB went through it ({rotations} turns)")  # fmt: skip
    return rss["flood"][0] - rss["idle"][0], most / 2**20


def report_console_cost(work: str, bundle: str, runs: int, cold_env: dict) -> float:
    """Median cold start with the guest's whole boot log on the console minus without."""
    cfg = os.path.join(work, "verbose.toml")
    with open(cfg, "w") as f:
        f.write("[vm]\nverbose_console = true\n[template]\nenabled = false\n")
    verbose_env = dict(os.environ, HYPERPY_CONFIG=cfg)
    root = os.path.join(work, "console-root")
    quiet, verbose = [], []
    for n in range(runs):
        for env, out in ((cold_env, quiet), (verbose_env, verbose)):
            start = time.monotonic()
            subprocess.run([HYPERPY, "--root", root, "run", "--bundle", bundle, f"c{n}{len(out)}"],
                           capture_output=True, env=env, timeout=180, check=True)  # fmt: skip
            out.append(time.monotonic() - start)
    q, v = statistics.median(quiet), statistics.median(verbose)
    print(f"\ncold start, console quiet {q:.3f} s, the kernel's whole boot log on it {v:.3f} s "
          f"(median of {runs}): the console's cost is at most {v - q:+.3f} s")  # fmt: skip
    return v - q
