"""`make bench`, the resize's part (issue 22, docs/resize.md): what the mechanism costs and
how fast it is.

* the start of ``true``, cold and from a template, with resizing on (the default: the VM
  boots at ``[vm] max_memory_mb``, 2 GiB, and the host's CPUs, a balloon holding the rest)
  beside resizing off (``max_memory_mb = 0``, ``max_vcpus = 1``: the VM is the pod's size);
* PSS per idle pod (``bench_template.idle_pods``), the same four ways;
* ``hyperpy update`` from 256 MiB, 1 vCPU to 1184 MiB (a 1 GiB limit) and 2 vCPUs and back:
  its wall time (when it returns, the memory and the vCPUs are usable in the guest: the
  balloon has moved and the CPUs are online) and the monitor's own steps (balloon, vCPUs).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from tests import bench_template

HYPERPY = os.path.join(os.path.dirname(sys.executable), "hyperpy")


def envs(work: str) -> dict[tuple[bool, bool], dict]:
    """(resize, templates) -> env."""
    out = {}
    for resize in (True, False):
        for tmpl in (False, True):
            path = os.path.join(work, f"resize-{resize}-{tmpl}.toml")
            vm = "" if resize else "max_memory_mb = 0\nmax_vcpus = 1\n"
            with open(path, "w") as f:
                f.write(f"[vm]\n{vm}[template]\nenabled = {str(tmpl).lower()}\n")
            out[(resize, tmpl)] = dict(os.environ, HYPERPY_CONFIG=path,
                                       HYPERPY_TEMPLATES=os.path.join(work, "tpl"))  # fmt: skip
    return out


def report_start(cold_run, root: str, bundle: str, runs: int, on: tuple[list, list],
                 work: str) -> float:  # fmt: skip
    """Start of ``true`` without resizing beside ``on`` (the main bench's cold and template
    lists, resizing on), interleaved; the cold start's cost of resizing, s."""
    e = envs(work)
    cold_run(root, bundle, 1899, env=e[(False, True)])  # builds that shape's template
    cold, tmpl = [], []
    for n in range(runs):
        cold.append(cold_run(root, bundle, 1700 + n, env=e[(False, False)]))
        tmpl.append(cold_run(root, bundle, 1800 + n, env=e[(False, True)]))
    print("\nstart of `true` by resizing (s, medians)     cold  template")
    for name, (c, t) in (("resizable (2 GiB, host CPUs)", on), ("fixed size", (cold, tmpl))):
        print(f"  {name:<42}{statistics.median(c):7.3f}{statistics.median(t):9.3f}")
    return statistics.median(on[0]) - statistics.median(cold)


def report_memory(work: str, busy: str) -> tuple[float, float]:
    """PSS per idle pod, resizing on and off, cold and from a template: (cold on/off,
    template on - off MiB)."""
    e = envs(work)
    pss = {}
    for key, env in e.items():
        pss[key], _ = bench_template.idle_pods(work, busy, env, f"rs-{key[0]}-{key[1]}")
    print("\nPSS per idle pod (MiB)                         cold  template")
    for resize in (True, False):
        name = "resizable (2 GiB, host CPUs)" if resize else "fixed size"
        print(f"  {name:<42}{pss[(resize, False)]:7.1f}{pss[(resize, True)]:9.1f}")
    return pss[(True, False)] / pss[(False, False)], pss[(True, True)] - pss[(False, True)]


def _update(argv: list[str], env: dict, cid: str, *flags: str) -> float:
    t = time.monotonic()
    subprocess.run([*argv, "update", *flags, cid], env=env, check=True, timeout=120)
    return time.monotonic() - t


def _steps(root: str, cid: str) -> dict:
    """The monitor's timings of the last resize (its ``info``)."""
    from hyperpy.monitor_client import MonitorClient
    from hyperpy.sandbox import record

    st = record.load(root, cid)
    return MonitorClient(record.state_dir(root, cid), st).request("info").get("resize", {})


def report_update(work: str, busy: str, rounds: int = 5) -> tuple[float, float]:
    """``update`` up and down ``rounds`` times in a cold pod and in one from a template:
    medians over both (grow s, shrink s)."""
    e = envs(work)
    two = (os.cpu_count() or 1) >= 2
    up = ["--memory", "1g", *(["--cpu-quota", "200000", "--cpu-period", "100000"] if two else [])]
    down = ["--memory", "64m", *(["--cpu-quota", "50000"] if two else [])]
    grow: dict[bool, list[float]] = {False: [], True: []}
    shrink: dict[bool, list[float]] = {False: [], True: []}
    steps: dict[tuple[bool, str], list[dict]] = {}
    for tmpl in (False, True):
        env = e[(True, tmpl)]
        root = os.path.join(work, f"resize-root-{tmpl}")
        argv = [HYPERPY, "--root", root]
        cid = f"resize-{tmpl}"
        null = subprocess.DEVNULL
        subprocess.run([*argv, "create", "--bundle", busy, cid], env=env, check=True,
                       stdin=null, stdout=null, stderr=null, timeout=180)  # fmt: skip
        try:
            subprocess.run([*argv, "start", cid], env=env, check=True, timeout=60)
            for _ in range(rounds):
                grow[tmpl].append(_update(argv, env, cid, *up))
                steps.setdefault((tmpl, "grow"), []).append(_steps(root, cid))
                shrink[tmpl].append(_update(argv, env, cid, *down))
                steps.setdefault((tmpl, "shrink"), []).append(_steps(root, cid))
            out = subprocess.run([*argv, "state", cid], env=env, capture_output=True,
                                 check=True, timeout=30).stdout  # fmt: skip
            vm = json.loads(out).get("vm")
        finally:
            subprocess.run([*argv, "delete", "--force", cid], env=env, capture_output=True,
                           timeout=60)  # fmt: skip
    print(f"\n`hyperpy update` 256 MiB, 1 vCPU <-> 1184 MiB, {2 if two else 1} vCPUs "
          f"({rounds} rounds; wall s, the monitor's steps ms, medians)")  # fmt: skip
    for tmpl in (False, True):
        for kind, xs in (("grow", grow[tmpl]), ("shrink", shrink[tmpl])):
            st = steps[(tmpl, kind)]
            parts = {k: statistics.median(s.get(k, 0.0) for s in st) for k in ("memory", "vcpus")}
            name = f"{'template' if tmpl else 'cold'} pod, {kind}"
            print(f"  {name:<24}{statistics.median(xs):7.3f} s   balloon {parts['memory']:6.0f}"
                  f" ms   vCPUs {parts['vcpus']:5.0f} ms")  # fmt: skip
    print(f"  the last state's vm: {vm}")
    return statistics.median(grow[False] + grow[True]), statistics.median(
        shrink[False] + shrink[True]
    )
