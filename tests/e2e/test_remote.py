"""containerd driving hyperpy whose pods' VMs run on a "remote" host over SSH: containerd
and its shims in the namespace of a test sshd (tests/sshd.py), HYPERPY_CONFIG choosing the
remote driver. Nothing may be left on either side."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import HAVE_ARTIFACTS, kill_processes_under, processes_under, settled
from tests.e2e.conftest import IMAGE, NS, Daemons, runtime_roots, state_left
from tests.sshd import Sshd

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def remote_daemons():
    if not (HAVE_ARTIFACTS and shutil.which("containerd") and shutil.which("sshd")):
        pytest.skip("needs the kernel and initrd, containerd and openssh-server")
    from hyperpy.image import build

    base = Path(tempfile.mkdtemp(prefix="hyperpy-e2e-remote-"))
    with Sshd(str(base)) as sshd:
        env = dict(os.environ, HYPERPY_CONFIG=sshd.config())
        d = Daemons(base / "daemons", netns=sshd.netns, ns=f"{NS}-remote", env=env)
        (base / "daemons").mkdir()
        try:
            build(str(base / "busybox.tar"))
            d.start(str(base / "busybox.tar"))
            yield d, sshd
        finally:
            d.stop()
            kill_processes_under(*runtime_roots(d), sshd.workdir)
    shutil.rmtree(base, ignore_errors=True)


def ctr_run(d: Daemons, cid: str, *cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(d.ctr_run_argv("--rm", IMAGE, cid, *cmd), capture_output=True,
                          timeout=180)  # fmt: skip


def test_ctr_runs_pods_on_the_remote_host(remote_daemons):
    d, sshd = remote_daemons
    res = ctr_run(d, "rem1", "sh", "-c", "echo hello from afar; uname -r; exit 0")
    assert res.returncode == 0, res.stderr.decode()
    out = res.stdout.decode().splitlines()
    assert out[0] == "hello from afar" and out[1].endswith("-hyperpy")
    res = ctr_run(d, "rem2", "sh", "-c", "exit 42")
    assert res.returncode == 42, res.stderr.decode()
    # the VMs ran there: the remote cache has the artifacts; nothing is left on either side
    assert os.listdir(os.path.join(sshd.workdir, "cache"))
    assert settled(lambda: processes_under(*runtime_roots(d), sshd.workdir)) == []
    pods = os.path.join(sshd.workdir, "pods")
    assert settled(lambda: os.listdir(pods)) == []
    assert state_left(runtime_roots(d)) == []
