"""Public CI runs what `.ci/run` runs: the workflow's jobs are `make test`'s targets, and its
kernel cache is keyed by hyperpy's own kernel-cache function."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from kernel import build

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"


def _runs() -> list[tuple[str, dict]]:
    doc = yaml.safe_load(WORKFLOW.read_text())
    return [(job, step) for job, spec in doc["jobs"].items() for step in spec["steps"]]


def test_the_workflow_runs_what_ci_run_runs():
    commands = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))
    ]
    assert commands == ["make test"]
    makefile = (ROOT / "Makefile").read_text()
    targets = re.search(r"^test: (.+)$", makefile, re.M)
    assert targets is not None
    make_runs = [
        step["run"].strip()
        for _, step in _runs()
        if re.fullmatch(r"make [a-z0-9-]+", str(step.get("run", "")).strip())
        and step["run"].strip() not in ("make deps", "make artifacts")
    ]
    assert make_runs == [f"make {t}" for t in targets.group(1).split()]


def test_the_kernel_cache_is_keyed_by_hyperpys_own_function():
    keyed = [(job, s) for job, s in _runs() if "kernel.build --cache-key" in str(s.get("run"))]
    caches = [(job, s) for job, s in _runs() if str(s.get("uses", "")).startswith("actions/cache")]
    assert {j for j, _ in keyed} == {j for j, _ in caches} == {"vm", "e2e"}
    for _, step in caches:
        assert step["with"]["key"] == "hyperpy-kernel-${{ steps.kernel.outputs.key }}"
        assert step["with"]["path"] == f"{build.cache_root()}/${{{{ steps.kernel.outputs.key }}}}"
    out = subprocess.run(
        [sys.executable, "-m", "kernel.build", "--cache-key"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert out.stdout.strip() == build.cache_key(build.source_version())
