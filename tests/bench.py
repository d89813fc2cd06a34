"""`make bench`: cold `hyperpy run` against the bare boot of the same kernel, side by side.

Measured in one run, interleaved so both see the same machine load:

* bare boot: QEMU with the same machine, kernel and devices, and the busybox-only initrd
  whose /init reboots at once (the VM exits): the floor any runtime on this kernel pays;
* cold `hyperpy run` of a bundle running `true` (``[template] enabled = false``): a fresh
  VM per run, CLI to exit status; the same restored from a VM template; the same cold with
  QEMU unconfined (``[jail] enabled = false``), to show what the jail costs;
* the guest-side phases of `create`/`start` from the guest's own CLOCK_BOOTTIME: kernel to
  /init, agent ready, container started, container exited.

Wall time is noisy on shared machines; the phases are also measured under QEMU's
``-icount shift=0,sleep=off`` with ``nokaslr``, where guest time is deterministic (it counts
instructions, not seconds), so a change in guest-side cost shows there even when wall time
jitters.  Medians of ``--runs`` (default 5) runs.

Then the network (``bench_network.py``), memory per idle pod with and without templates
(``bench_template.py``), the hot verbs beside runc (``bench_verbs.py``) and what a console
flood costs the host (``bench_bounds.py``), file I/O and the start by ``[vm] files`` beside
runc (``bench_files.py``), what resizing costs a pod and how fast ``update`` resizes
(``bench_resize.py``); the output ends
with ``summary NAME X`` lines for scripts. The libvirt driver's cold start and QEMU memory
are measured beside the direct driver's (``bench_libvirt.py``, a libvirtd of its own when
none runs), and the remote driver's cold start against an sshd on loopback in a network
namespace of the bench's (``tests/sshd.py``: the SSH and copy overhead, no real network).

    python -m tests.bench [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from tests import bench_bounds, bench_files, bench_libvirt, bench_resize, bench_template
from tests.libvirtd import Daemon
from tests.sshd import Sshd

HYPERPY = os.path.join(os.path.dirname(sys.executable), "hyperpy")


def _hyperpy(root: str, *args: str, env: dict | None = None, timeout: float = 180,
             prefix: tuple[str, ...] = ()) -> None:  # fmt: skip
    res = subprocess.run(
        [*prefix, HYPERPY, "--root", root, *args], capture_output=True, timeout=timeout, env=env
    )
    if res.returncode != 0:
        raise SystemExit(f"hyperpy {' '.join(args)} failed ({res.returncode}): {res.stderr!r}")


def bare_boot(tmp: str, icount: bool) -> float:
    """Wall seconds from spawning QEMU to its exit, with the bare initrd."""
    import dataclasses

    from hyperpy.config import artifacts_dir
    from hyperpy.config import load as load_config
    from hyperpy.vm import plan, probes, qemu

    cfg = dataclasses.replace(load_config().vm, icount=icount)
    accel = probes.choose_accel(cfg)
    chans = qemu.Channels(tmp)
    bare = os.path.join(artifacts_dir(), "initrd-bare.img")
    spec = plan.build_spec(cfg, accel, chans, initrd=bare)
    start = time.monotonic()
    try:
        res = subprocess.run(
            spec.argv(), cwd=tmp, capture_output=True, timeout=120, pass_fds=spec.pass_fds()
        )
        took = time.monotonic() - start
    finally:
        chans.close()
    if res.returncode != 0:
        raise SystemExit(f"bare boot failed ({res.returncode}): {res.stderr[-500:]!r}")
    return took


def cold_run(root: str, bundle: str, n: int, env: dict | None = None,
             prefix: tuple[str, ...] = ()) -> float:  # fmt: skip
    start = time.monotonic()
    _hyperpy(root, "run", "--bundle", bundle, f"bench-run-{n}", env=env, prefix=prefix)
    return time.monotonic() - start


def phases(root: str, bundle: str, n: int, env: dict | None = None) -> dict[str, float]:
    """Guest CLOCK_BOOTTIME ms at each phase, as the sandbox monitor recorded them."""
    cid = f"bench-phase-{n}"
    # The container's stdio goes to the process proxy, which outlives create: a file, not a
    # pipe we would wait on.
    with tempfile.TemporaryFile() as err:
        res = subprocess.run(
            [HYPERPY, "--root", root, "create", "--bundle", bundle, cid],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            timeout=180,
            env=env,
        )
        if res.returncode != 0:
            err.seek(0)
            raise SystemExit(f"create failed: {err.read()!r}")
    try:
        _hyperpy(root, "start", cid, env=env)
        deadline = time.monotonic() + 60
        exit_file = os.path.join(root, cid, "exit.json")
        while not os.path.exists(exit_file) and time.monotonic() < deadline:
            time.sleep(0.02)
        with open(exit_file) as f:
            info = json.load(f)
    finally:
        _hyperpy(root, "delete", "--force", cid, env=env)
    g = info["guest"]
    ready = g.get("ready_ms") or g["hello_ms"]
    return {
        "kernel to /init": g["init_ms"],
        "/init to agent ready (imports)": ready - g["init_ms"],
        "agent ready to started (hello, mounts, create)": g["started_ms"] - ready,
        "container started to exited": g["exit_ms"] - g["started_ms"],
        "total to container exited": g["exit_ms"],
    }


DETERMINISTIC = {
    "kernel to /init",
    "/init to agent ready (imports)",
}


def _median_phases(samples: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(s[k] for s in samples) for k in samples[0]}


def report_verbs(work: str, calls: int) -> float:
    """Each hot verb as the shim calls it, hyperpy beside runc; the worst ratio."""
    from tests.bench_verbs import measure

    print("\nhot verbs, median ms per call (as containerd's runc shim makes them)")
    print("  verb                 hyperpy     runc    ratio")
    ratios = []
    for verb, (hp, rc) in measure(os.path.join(work, "verbs"), calls).items():
        ratios.append(hp / rc)
        print(f"  {verb:<18}{hp * 1000:10.1f}{rc * 1000:9.1f}{hp / rc:8.1f}x")
    return max(ratios)


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bench")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument(
        "--icount-runs", type=int, default=3, help="deterministic runs (slow in wall time)"
    )
    ap.add_argument("--verb-calls", type=int, default=15, help="calls per hot verb")
    args = ap.parse_args()
    from hyperpy.bundle import make_bundle
    from hyperpy.config import load as load_config
    from hyperpy.vm import probes

    work = tempfile.mkdtemp(prefix="hyperpy-bench-")
    libvirtd = Daemon(work)
    sshd = Sshd(os.path.join(work, "sshd"))
    try:
        libvirtd.__enter__()
        os.makedirs(sshd.base)
        sshd.__enter__()
        remote_env = dict(os.environ, HYPERPY_CONFIG=sshd.config())
        in_sshd = tuple(sshd.hyperpy_argv())
        bundle = os.path.join(work, "bundle")
        os.makedirs(bundle)
        make_bundle(bundle, ["true"])
        root = os.path.join(work, "root")
        cfg_path = os.path.join(work, "icount.toml")
        with open(cfg_path, "w") as f:
            # Under -icount the guest counts instructions: busy-waits in the kernel take
            # tens of seconds of wall time, hence the long boot timeout.
            f.write("[vm]\nicount = true\nboot_timeout = 300.0\n[template]\nenabled = false\n")
        icount_env = dict(os.environ, HYPERPY_CONFIG=cfg_path)
        unjailed_path = os.path.join(work, "unjailed.toml")
        with open(unjailed_path, "w") as f:
            f.write("[jail]\nenabled = false\n[template]\nenabled = false\n")
        unjailed_env = dict(os.environ, HYPERPY_CONFIG=unjailed_path)
        os.environ["HYPERPY_TEMPLATES"] = os.path.join(work, "tpl")  # the bench's own
        cold_env, tmpl_env = bench_template.envs(work)
        q35_env, lv_env = bench_libvirt.envs(work)
        cold_run(root, bundle, 999, env=tmpl_env)  # builds the template of this shape
        accel = probes.choose_accel(load_config().vm)
        print(
            f"accelerator: {accel}; {args.runs} runs each ({args.icount_runs} under -icount), "
            "interleaved; medians"
        )
        bare, run, tmpl, unjailed, ph, ph_icount, q35, lv, rem = ([] for _ in range(9))
        cold_run(root, bundle, 998, env=remote_env, prefix=in_sshd)  # fills the remote cache
        for n in range(args.runs):
            bare.append(bare_boot(work, icount=False))
            run.append(cold_run(root, bundle, n, env=cold_env))
            tmpl.append(cold_run(root, bundle, 300 + n, env=tmpl_env))
            unjailed.append(cold_run(root, bundle, 200 + n, env=unjailed_env))
            q35.append(cold_run(root, bundle, 400 + n, env=q35_env))
            lv.append(cold_run(root, bundle, 500 + n, env=lv_env))
            rem.append(cold_run(root, bundle, 600 + n, env=remote_env, prefix=in_sshd))
            ph.append(phases(root, bundle, n, env=cold_env))
            if n < args.icount_runs:
                ph_icount.append(phases(root, bundle, 100 + n, env=icount_env))
        b, r = statistics.median(bare), statistics.median(run)
        print("\nwall time (s)                         median    min    max")
        for name, xs in (
            ("bare boot (init reboots at once)", bare),
            ("hyperpy run `true` (cold)", run),
            ("  the same, from a template", tmpl),
            ("  the same, cold, QEMU unconfined", unjailed),
        ):
            print(f"  {name:<36}{statistics.median(xs):7.3f}{min(xs):7.3f}{max(xs):7.3f}")
        t = statistics.median(tmpl)
        print(f"  ratio cold/bare: {r / b:.2f}x  (hyperpy's own cost: {r - b:+.3f} s)")
        print(f"  ratio template/cold: {t / r:.2f}x")
        u = statistics.median(unjailed)
        print(f"  QEMU's jail costs {r - u:+.3f} s ({(r - u) / u * 100:+.1f}% of a cold run)")
        print("\nguest phases, ms of guest CLOCK_BOOTTIME       TCG    icount  icount spread")
        m, mi = _median_phases(ph), _median_phases(ph_icount)
        for k in m:
            spread = max(s[k] for s in ph_icount) - min(s[k] for s in ph_icount)
            icount = f"{mi[k]:10.1f}{spread:9.2f}" if k in DETERMINISTIC else "         -        -"
            print(f"  {k:<44}{m[k]:7.0f}{icount}")
        print(
            "  (under -icount,sleep=off guest time jumps while the guest idles waiting for the\n"
            "   host, so only the phases that run without the host are deterministic)"
        )
        lv_ratio = bench_libvirt.report_start(run, q35, lv)
        rm = statistics.median(rem)
        print(
            f"  remote driver (sshd on loopback, accel tcg): {rm:.3f} s median, "
            f"{min(rem):.3f}-{max(rem):.3f}; ratio remote/direct {rm / r:.2f}x"
        )
        from tests.bench_network import report

        report(work)
        busy = os.path.join(work, "sleep-bundle")
        os.makedirs(busy)
        make_bundle(busy, ["sleep", "100000"])
        pss = bench_template.report_memory(work, busy, cold_env, tmpl_env)
        lv_pss = bench_libvirt.report_memory(work, busy, cold_env, lv_env)
        worst = report_verbs(work, args.verb_calls)
        flood_rss, flood_log = bench_bounds.report_flood(work, busy)
        console_cost = bench_bounds.report_console_cost(work, bundle, args.runs, cold_env)
        bench_files.report_start(cold_run, root, bundle, args.runs, (run, tmpl), work)
        files_write, files_untar = bench_files.report(work, 3, bench_files.envs(work))
        resize_start = bench_resize.report_start(cold_run, root, bundle, args.runs, (run, tmpl),
                                                 work)  # fmt: skip
        resize_pss, resize_tmpl_pss = bench_resize.report_memory(work, busy)
        grow_s, shrink_s = bench_resize.report_update(work, busy)
        print(f"\nsummary cold/bare {r / b:.2f}")
        print(f"summary template/cold {t / r:.2f}")
        print(f"summary pss-mib-per-pod {pss:.1f}")
        print(f"summary hot-verbs/runc {worst:.1f}")
        print(f"summary libvirt/direct-cold {lv_ratio:.2f}")
        print(f"summary libvirt-pss-mib-per-pod {lv_pss:.1f}")
        print(f"summary remote/direct-cold {rm / r:.2f}")
        print(f"summary flood-qemu-extra-rss-mib {flood_rss:.1f}")
        print(f"summary flood-console-log-mib {flood_log:.2f}")
        print(f"summary verbose-console-cold-s {console_cost:+.3f}")
        print(f"summary root-write-mibs/runc {files_write:.2f}")
        print(f"summary untar/runc {files_untar:.1f}")
        print(f"summary resize-cold-start-s {resize_start:+.3f}")
        print(f"summary resize-pss/fixed-cold {resize_pss:.2f}")
        print(f"summary resize-pss-mib-template {resize_tmpl_pss:+.1f}")
        print(f"summary update-grow-s {grow_s:.3f}")
        print(f"summary update-shrink-s {shrink_s:.3f}")
    finally:
        sshd.__exit__()
        libvirtd.__exit__()
        bench_template.remove_templates(bench_template.envs(work)[1])
        subprocess.run(["umount", "-R", "-l", os.path.join(work, "root")], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
