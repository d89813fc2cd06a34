"""Capture the corpus: ``python -m tests.corpus.capture OUTDIR`` (as root; needs docker.io,
podman, containerd and containernetworking-plugins; some seconds).

Private daemons under one fixed directory, BASE (fixed so the paths the tools write into
config.json are the same on every capture): containerd and dockerd as tests/e2e's
``Daemons`` runs them (CRI off, ``--bridge=none``, no iptables), podman with its own root,
runroot and tmpdir, and containerd's CRI plugin as tests/e2e/test_cri.py's ``Cri`` runs it
(in a network namespace of its own, with CNI's bridge there). Each tool's runtime is the
capture runtime (``runtime.py``: copy config.json on create, then exec runc), registered
under the name hyperpy's README gives hyperpy, so the command lines are the ones a user of
hyperpy types. OUTDIR gets ``<tool>-<case>.json`` byte for byte as the tool wrote it, and
INDEX.json naming each file's tool, its version and the command (or CRI request) that made
it. Nothing is left running, mounted or on disk under BASE afterwards.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from tests.conftest import PAUSE_CMD
from tests.corpus import CASES

log = logging.getLogger(__name__)

BASE = Path("/tmp/hyperpy-corpus")
REPO = Path(__file__).resolve().parents[2]
DOCKER_IMAGE = "hyperpy/busybox:latest"
IMAGE = "docker.io/hyperpy/busybox:latest"
PAUSE = "docker.io/hyperpy/pause:latest"
DEVICE = "/dev/fuse"
POD_UID = "7f1c1e0e-0d0c-4b7b-9d8e-2c3f4a5b6c7d"  # a pod UID as the kubelet makes them
CGROUP_PARENTS = {
    "cgroupfs": f"/kubepods/burstable/pod{POD_UID}",
    "slice": f"kubepods-burstable-pod{POD_UID.replace('-', '_')}.slice",
}
PODMAN_CONF = """\
# containers.conf for the corpus's podman only (CONTAINERS_CONF): root here lacks
# CAP_SYS_RESOURCE, so podman's default rlimits (nofile 1048576, nproc 4194304) make runc fail.
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
[network]
network_config_dir = "{base}/podman/networks"
"""


CGROUP_ROOT = "/sys/fs/cgroup"
# the parents of the cgroups the tools make here (runc leaves them when a container goes)
CGROUP_PARENTS_MADE = ("docker", "kubepods", "libpod_parent", "hyperpy-corpus", "kubepods-")


def cgroups() -> set[str]:
    """The host's cgroup directories (every hierarchy) below the tools' parents."""
    out: set[str] = set()
    for top, dirs, _ in os.walk(CGROUP_ROOT):
        rel = os.path.relpath(top, CGROUP_ROOT).split("/", 1)
        if len(rel) == 2 and not rel[1].startswith(CGROUP_PARENTS_MADE):
            dirs[:] = []
            continue
        out.update(os.path.join(top, d) for d in dirs)
    return {
        d
        for d in out
        if (os.path.relpath(d, CGROUP_ROOT).split("/", 1) + [""])[1].startswith(CGROUP_PARENTS_MADE)
    }


def remove_cgroups(before: set[str]) -> None:
    """The (empty) cgroups the capture made, deepest first; any still in use stays."""
    for d in sorted(cgroups() - before, key=lambda p: p.count("/"), reverse=True):
        try:
            os.rmdir(d)
        except OSError as exc:
            log.warning("cgroup %s stays: %s", d, exc.strerror)


def run(argv: list[str], timeout: float = 180, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if res.returncode != 0:
        log.warning("%s: exit %d: %s", " ".join(argv), res.returncode, res.stderr.strip())
    return res


def first_line(argv: list[str]) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout.strip()
    return out.splitlines()[0] if out else ""


def one_line(message: object) -> str:
    """A CRI request in protobuf's text format, on one line."""
    from google.protobuf import text_format

    return text_format.MessageToString(message, as_one_line=True)  # type: ignore[arg-type]


class Corpus:
    """What the capture runtime wrote (``raw/<id>.json``), sorted into named cases."""

    def __init__(self, base: Path, out: Path) -> None:
        self.raw = base / "raw"
        self.raw.mkdir()
        self.out = out
        self.seen: set[str] = set()
        self.index: dict[str, dict] = {}
        self.runtime = base / "capture-runtime"
        self.runtime.write_text(
            "#!/usr/bin/python3 -S\n"
            f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
            f"from tests.corpus.runtime import main; main({str(self.raw)!r})\n"
        )
        self.runtime.chmod(0o755)

    def new(self) -> list[str]:
        """Ids the runtime saw created since the last call."""
        ids = {p.stem for p in self.raw.glob("*.json")} - self.seen
        self.seen |= ids
        return sorted(ids)

    def keep(self, case: str, cid: str, tool: str, version: str, command: object) -> None:
        assert case in CASES, case
        shutil.copyfile(self.raw / f"{cid}.json", self.out / f"{case}.json")
        self.index[f"{case}.json"] = {
            "tool": tool,
            "version": version,
            "command": command,
            "container_id": cid,
        }
        log.info("captured %s (%s)", case, cid)

    def one(self, case: str, tool: str, version: str, argv: list[str],
            do: Callable[[], object]) -> None:  # fmt: skip
        do()
        ids = self.new()
        if len(ids) != 1:
            log.error("%s: expected one create, the runtime saw %s", case, ids)
            return
        self.keep(case, ids[0], tool, version, argv)


# --- docker and ctr, on tests/e2e's Daemons -------------------------------------------


def capture_docker_ctr(base: Path, corpus: Corpus, image_tar: str) -> None:
    from tests.e2e import conftest as e2e

    e2e.HYPERPY = str(corpus.runtime)  # Daemons registers it as the runtime "hyperpy"
    d = e2e.Daemons(base / "docker", ns="hyperpy-corpus")
    d.base.mkdir()
    try:
        d.start(image_tar)
        server = d.docker("version", "--format", "{{.Server.Version}}").stdout.decode().strip()
        version = (
            f"Docker Engine {server} (client {first_line(['docker', '--version'])}); "
            f"{first_line(['containerd', '--version'])}; "
            f"{first_line(['runc', '--version'])}"
        )
        cases = {
            "docker-default": [],
            "docker-privileged": ["--privileged"],
            "docker-read-only": ["--read-only"],
            "docker-cap-add-net-admin": ["--cap-add", "NET_ADMIN"],
            "docker-device-fuse": ["--device", DEVICE],
            "docker-memory-cpus": ["--memory", "64m", "--cpus", "1.5"],
            "docker-user": ["--user", "1000:1000"],
        }
        for case, flags in cases.items():
            args = ["run", "--runtime", "hyperpy", *flags, DOCKER_IMAGE, "true"]
            corpus.one(case, "docker", version, ["docker", *args], partial(d.docker, *args))
        argv = d.ctr_run_argv(IMAGE, "corpus-ctr-run", "true")
        shown = [a if a != str(corpus.runtime) else "/usr/local/bin/hyperpy" for a in argv]
        ctr_version = (
            f"{first_line(['ctr', '--version'])}; {first_line(['containerd', '--version'])}"
        )
        corpus.one("ctr-run", "ctr", ctr_version, shown,
                   lambda: run(argv))  # fmt: skip
    finally:
        d.stop()
        for ns in (d.ns, f"{d.ns}-moby"):
            try:
                os.rmdir(f"/run/containerd/runc/{ns}")  # the shim's runc root, empty by now
            except OSError:
                pass


# --- podman ----------------------------------------------------------------------------


def capture_podman(base: Path, corpus: Corpus, image_tar: str, pause_tar: str) -> None:
    p = base / "podman"
    p.mkdir()
    (p / "containers.conf").write_text(PODMAN_CONF.format(base=base))
    env = dict(os.environ, CONTAINERS_CONF=str(p / "containers.conf"))
    flags = [
        "--root", str(p / "root"), "--runroot", str(p / "run"), "--tmpdir", str(p / "tmp"),
        "--volumepath", str(p / "volumes"), "--cgroup-manager", "cgroupfs",
        "--events-backend", "file", "--runtime", str(corpus.runtime),
    ]  # fmt: skip

    def podman(*args: str) -> subprocess.CompletedProcess:
        return run(["podman", *flags, *args], env=env)

    def shown(*args: str) -> list[str]:
        return ["podman", *[a if a != str(corpus.runtime) else "/usr/local/bin/hyperpy"
                            for a in flags], *args]  # fmt: skip

    version = f"{first_line(['podman', '--version'])}; {first_line(['conmon', '--version'])}"
    version += f"; {first_line(['runc', '--version'])}"
    try:
        for tar in (image_tar, pause_tar):
            res = podman("load", "-i", tar)
            assert res.returncode == 0, res.stderr
        for case, extra in (("podman-default", []), ("podman-privileged", ["--privileged"])):
            args = ["run", "--network", "none", *extra, IMAGE, "true"]
            corpus.one(case, "podman", version, shown(*args), partial(podman, *args))
        create = ["pod", "create", "--name", "corpus-pod", "--infra-image", PAUSE,
                  "--network", "none"]  # fmt: skip
        podman(*create)
        member = ["run", "--pod", "corpus-pod", IMAGE, "true"]
        podman(*member)
        infra = podman("pod", "inspect", "--format", "{{.InfraContainerID}}", "corpus-pod")
        infra_id = infra.stdout.strip()
        ids = corpus.new()
        if infra_id not in ids or len(ids) != 2:
            log.error("podman pod: expected the infra %s and one member, saw %s", infra_id, ids)
        else:
            both = [shown(*create), shown(*member)]
            corpus.keep("podman-pod-infra", infra_id, "podman", version, both)
            (cid,) = (i for i in ids if i != infra_id)
            corpus.keep("podman-pod-container", cid, "podman", version, both)
    finally:
        podman("pod", "rm", "-f", "-a")
        podman("rm", "-f", "-a")
        podman("unmount", "-a")
        from tests.e2e.conftest import _umount_below

        _umount_below(str(p))


# --- containerd's CRI, on tests/e2e/test_cri.py's Cri ---------------------------------


def capture_cri(base: Path, corpus: Corpus) -> None:
    from tests.e2e import test_cri

    test_cri.HYPERPY = str(corpus.runtime)  # Cri registers it as the handler "hyperpy"
    test_cri.NETNS = "hp-corpus-cri"
    c = test_cri.Cri(base / "cri")
    c.base.mkdir()
    (c.base / "hostpath").mkdir()
    run(["ip", "netns", "add", test_cri.NETNS])
    run(["ip", "-n", test_cri.NETNS, "link", "set", "lo", "up"])
    try:
        c.start()
        pb, rt = c.pb, c.rt
        v = rt.Version(pb.VersionRequest(), timeout=30)
        version = (
            f"containerd CRI plugin {v.runtime_version} (CRI {v.runtime_api_version}); "
            f"{first_line(['containerd', '--version'])}; "
            f"{first_line(['runc', '--version'])}"
        )
        for kind, parent in CGROUP_PARENTS.items():
            pod_config = pb.PodSandboxConfig(
                metadata=pb.PodSandboxMetadata(
                    name=f"corpus-{kind}", uid=POD_UID, namespace="default"
                ),
                hostname=f"corpus-{kind}",
                log_directory=str(c.base / "logs" / kind),
                linux=pb.LinuxPodSandboxConfig(
                    cgroup_parent=parent,
                    security_context=pb.LinuxSandboxSecurityContext(
                        namespace_options=pb.NamespaceOption(network=pb.POD, pid=pb.CONTAINER)
                    ),
                ),
            )
            os.makedirs(c.base / "logs" / kind)
            request = pb.RunPodSandboxRequest(config=pod_config, runtime_handler="hyperpy")
            pod = rt.RunPodSandbox(request, timeout=180).pod_sandbox_id
            corpus.new()
            corpus.keep(f"cri-sandbox-{kind}", pod, "containerd-cri", version,
                        f"RunPodSandbox {{{one_line(request)}}}")  # fmt: skip
            cfg = pb.ContainerConfig(
                metadata=pb.ContainerMetadata(name="app"),
                image=pb.ImageSpec(image=IMAGE),
                command=["sleep", "1000"],
                log_path="app.log",
                mounts=[pb.Mount(container_path="/data", host_path=str(c.base / "hostpath"))],
                linux=pb.LinuxContainerConfig(),
            )
            create = pb.CreateContainerRequest(
                pod_sandbox_id=pod, config=cfg, sandbox_config=pod_config
            )
            cid = rt.CreateContainer(create, timeout=180).container_id
            rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=180)
            corpus.new()
            corpus.keep(f"cri-container-{kind}", cid, "containerd-cri", version,
                        f"CreateContainer {{{one_line(create)}}}")  # fmt: skip
    finally:
        c.stop()
        from tests.conftest import kill_processes_under

        kill_processes_under(c.root, str(base))
        run(["ip", "netns", "del", test_cri.NETNS])


def main(out: Path) -> int:
    from hyperpy.image import build

    out.mkdir(parents=True, exist_ok=True)
    BASE.mkdir()  # fails if a capture is running (or one left it behind: remove it)
    before = cgroups()
    try:
        corpus = Corpus(BASE, out)
        image_tar, pause_tar = str(BASE / "busybox.tar"), str(BASE / "pause.tar")
        build(image_tar)
        build(pause_tar, "hyperpy/pause:latest", PAUSE_CMD)
        capture_docker_ctr(BASE, corpus, image_tar)
        capture_podman(BASE, corpus, image_tar, pause_tar)
        capture_cri(BASE, corpus)
    finally:
        from tests.conftest import kill_processes_under
        from tests.e2e.conftest import _umount_below

        kill_processes_under(str(BASE))
        time.sleep(0.5)
        _umount_below(str(BASE))
        shutil.rmtree(BASE, ignore_errors=True)
        remove_cgroups(before)
    index = {
        "captured_by": "python -m tests.corpus.capture tests/corpus/data (as root)",
        "note": "each file is byte for byte the config.json the tool wrote; the runtime "
        "path shown in commands is hyperpy's README path (the capture runtime stood there)",
        "files": dict(sorted(corpus.index.items())),
    }
    (out / "INDEX.json").write_text(json.dumps(index, indent=2) + "\n")
    missing = [c for c in CASES if f"{c}.json" not in corpus.index]
    if missing:
        log.error("not captured: %s", ", ".join(missing))
        return 1
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.corpus.capture OUTDIR")
    sys.exit(main(Path(sys.argv[1])))
