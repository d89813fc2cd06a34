"""`make bench`, the VM templates' part: start latency and memory per idle pod.

* ``hyperpy run`` of ``true`` restored from a template, beside cold boots (``tests/bench.py``
  interleaves them with the bare boots);
* memory per idle pod: ten pods each running ``sleep``, the PSS of their QEMUs
  (``/proc/PID/smaps_rollup``) summed and divided by ten, with and without templates. PSS
  splits a page shared by N processes N ways: the template's pages that the pods have not
  written are counted once over the ten. What the template's keeper holds beyond what the
  pods map (the memfd's allocated blocks: all of the VM's memory) is printed beside it.

The templates are built in a directory of the bench's own and removed at the end.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

HYPERPY = os.path.join(os.path.dirname(sys.executable), "hyperpy")
IDLE_PODS = 10


def _env(work: str, enabled: bool) -> dict:
    path = os.path.join(work, f"template-{enabled}.toml")
    with open(path, "w") as f:
        f.write(f"[template]\nenabled = {'true' if enabled else 'false'}\n")
    return dict(os.environ, HYPERPY_CONFIG=path, HYPERPY_TEMPLATES=os.path.join(work, "tpl"))


def envs(work: str) -> tuple[dict, dict]:
    """(cold env, template env): the same machine, templates off and on."""
    return _env(work, False), _env(work, True)


def _pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise SystemExit(f"no Pss in /proc/{pid}/smaps_rollup")


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def idle_pods(work: str, bundle: str, env: dict, tag: str) -> tuple[float, float]:
    """(mean QEMU PSS MiB, mean QEMU RSS MiB) over IDLE_PODS pods running ``sleep``."""
    root = os.path.join(work, f"idle-{tag}")
    argv = [HYPERPY, "--root", root]
    ids = [f"idle-{tag}-{i}" for i in range(IDLE_PODS)]
    try:
        for cid in ids:
            with open(os.path.join(work, f"{cid}.out"), "wb") as out:
                null = subprocess.DEVNULL
                subprocess.run([*argv, "create", "--bundle", bundle, cid], env=env, check=True,
                               stdin=null, stdout=out, stderr=out, timeout=180)  # fmt: skip
            subprocess.run([*argv, "start", cid], env=env, check=True, timeout=60)
        time.sleep(3)  # idle: the guests settle
        pids = []
        for cid in ids:
            with open(os.path.join(root, cid, "state.json")) as f:
                pids.append(json.load(f)["qemu_pid"])
        pss = sum(_pss_kib(p) for p in pids) / 1024 / IDLE_PODS
        rss = statistics.mean(_rss_kib(p) for p in pids) / 1024
        return pss, rss
    finally:
        for cid in ids:
            subprocess.run([*argv, "delete", "--force", cid], env=env, capture_output=True,
                           timeout=60)  # fmt: skip


def keeper_memory_mib(env: dict) -> float:
    """MiB allocated to the templates' memory memfds (every page: the keeper fills them)."""
    res = subprocess.run([HYPERPY, "template", "ls", "--format", "json"], env=env,
                         capture_output=True, timeout=30, check=True)  # fmt: skip
    total = 0
    for t in json.loads(res.stdout):
        pid = t.get("pid")
        for fd in os.listdir(f"/proc/{pid}/fd"):
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:hyperpy-template-ram"):
                total += os.stat(f"/proc/{pid}/fd/{fd}").st_blocks * 512
    return total / (1 << 20)


def remove_templates(env: dict) -> None:
    subprocess.run([HYPERPY, "template", "rm", "--all"], env=env, capture_output=True, timeout=60)


def report_memory(work: str, bundle: str, cold_env: dict, tmpl_env: dict) -> float:
    """Print memory per idle pod both ways; return the PSS MiB per pod with templates."""
    cold_pss, cold_rss = idle_pods(work, bundle, cold_env, "cold")
    tmpl_pss, tmpl_rss = idle_pods(work, bundle, tmpl_env, "tmpl")
    held = keeper_memory_mib(tmpl_env)
    print(f"\nmemory per idle pod ({IDLE_PODS} pods running sleep; QEMU's PSS summed / "
          f"{IDLE_PODS})       PSS MiB   RSS MiB")  # fmt: skip
    for name, pss, rss in (("cold boots", cold_pss, cold_rss), ("from a template", tmpl_pss,
                                                                 tmpl_rss)):  # fmt: skip
        print(f"  {name:<55}{pss:7.1f}{rss:10.1f}")
    print(f"  ratio template/cold (PSS): {tmpl_pss / cold_pss:.2f}; the template's memory the "
          f"keeper holds: {held:.1f} MiB (once per host and shape, {held / IDLE_PODS:.1f} per "
          f"pod over {IDLE_PODS})")  # fmt: skip
    return tmpl_pss
