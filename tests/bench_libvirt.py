"""`make bench`, the libvirt driver's part: cold start and QEMU memory beside the direct driver.

``tests/bench.py`` interleaves three cold ``hyperpy run`` of ``true`` (templates off):

* the direct driver (microvm), as everywhere else in the bench;
* the direct driver on ``q35``: the machine libvirt uses, so the machine's cost and
  libvirt's own are told apart;
* the libvirt driver (a transient domain on q35, QEMU as libvirt's user).

Memory: ten idle pods each way (``bench_template.idle_pods``: QEMU's PSS summed over ten).
A libvirtd is started for the bench when none answers (``tests/libvirtd.py``).
"""

from __future__ import annotations

import os
import statistics

from tests import bench_template


def _env(work: str, name: str, text: str) -> dict:
    path = os.path.join(work, f"{name}.toml")
    with open(path, "w") as f:
        f.write(text + "[template]\nenabled = false\n")
    return dict(os.environ, HYPERPY_CONFIG=path)


def envs(work: str) -> tuple[dict, dict]:
    """(direct driver on q35, libvirt driver), both cold."""
    q35 = _env(work, "q35", '[vm]\nmachine = "q35"\n')
    return q35, _env(work, "libvirt", '[vm]\ndriver = "libvirt"\n')


def report_start(cold: list[float], q35: list[float], lv: list[float]) -> float:
    """Print the three cold starts; return libvirt/direct (medians)."""
    c, q, v = (statistics.median(x) for x in (cold, q35, lv))
    print("\ncold start by driver (s)              median    min    max")
    for name, xs in (("direct driver, microvm", cold), ("direct driver, q35", q35),
                     ("libvirt driver (q35)", lv)):  # fmt: skip
        print(f"  {name:<36}{statistics.median(xs):7.3f}{min(xs):7.3f}{max(xs):7.3f}")
    print(f"  ratio libvirt/direct: {v / c:.2f}x (q35 instead of microvm: {q - c:+.3f} s; "
          f"libvirt itself: {v - q:+.3f} s)")  # fmt: skip
    return v / c


def report_memory(work: str, bundle: str, cold_env: dict, lv_env: dict) -> float:
    """Print QEMU memory per idle pod on both drivers; return libvirt's PSS MiB."""
    cold_pss, cold_rss = bench_template.idle_pods(work, bundle, cold_env, "direct")
    lv_pss, lv_rss = bench_template.idle_pods(work, bundle, lv_env, "libvirt")
    print(f"\nQEMU memory per idle pod by driver ({bench_template.IDLE_PODS} pods, cold)"
          "                PSS MiB   RSS MiB")  # fmt: skip
    for name, pss, rss in (("direct driver, microvm", cold_pss, cold_rss),
                           ("libvirt driver (q35)", lv_pss, lv_rss)):  # fmt: skip
        print(f"  {name:<60}{pss:7.1f}{rss:10.1f}")
    print(f"  ratio libvirt/direct (PSS): {lv_pss / cold_pss:.2f}")
    return lv_pss
