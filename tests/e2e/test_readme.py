"""The README's containerd snippet, loaded by a real containerd."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.e2e.conftest import readme_snippet

pytestmark = pytest.mark.e2e


@pytest.mark.skipif(not shutil.which("containerd"), reason="needs containerd")
def test_containerd_snippet_is_understood(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text('version = 2\n' f'root = "{tmp_path}/root"\nstate = "{tmp_path}/state"\n'
                   + readme_snippet("containerd"))  # fmt: skip
    res = subprocess.run(
        ["containerd", "--config", str(cfg), "config", "dump"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    dumped = res.stdout
    section = dumped.split('[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.hyperpy]')[1]
    assert 'runtime_type = "io.containerd.runc.v2"' in section.split("[plugins")[0]
    assert 'BinaryName = "/usr/local/bin/hyperpy"' in section
