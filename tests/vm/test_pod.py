"""Several containers in one VM (a pod), as CRI asks for with its annotations."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import hyperpy, needs_artifacts, vms_under
from tests.vm.test_lifecycle import create, subreaper  # noqa: F401 - fixture

# on both hypervisor drivers (tests/vm/conftest.py)
pytestmark = [pytest.mark.vm, needs_artifacts, pytest.mark.usefixtures("driver")]


def with_spec(bundle, args, annotations=None, join=None):
    b = bundle(args)
    spec = json.load(open(f"{b}/config.json"))
    spec["annotations"] = annotations or {}
    if join:
        for ns in spec["linux"]["namespaces"]:
            if ns["type"] in join:
                ns["path"] = join[ns["type"]]
    json.dump(spec, open(f"{b}/config.json", "w"))
    return b


def test_containers_of_a_pod_share_one_vm_and_only_the_namespaces_they_join(root, bundle):
    sandbox_pid = create(root, with_spec(bundle, ["sleep", "1001"]), "pod1")
    hyperpy(root, "start", "pod1", check=True)
    cri = {"io.kubernetes.cri.container-type": "container",
           "io.kubernetes.cri.sandbox-id": "pod1"}  # fmt: skip
    create(root, with_spec(bundle, ["sleep", "1002"], cri), "app1")
    create(
        root,
        with_spec(
            bundle,
            ["sleep", "1003"],
            {"io.hyperpy.sandbox": "pod1"},
            join={"pid": f"/proc/{sandbox_pid}/ns/pid"},
        ),  # fmt: skip
        "app2",
    )
    hyperpy(root, "start", "app1", check=True)
    hyperpy(root, "start", "app2", check=True)
    vms = vms_under(root)
    assert len(vms) == 1, vms  # one VM for all
    assert not os.path.exists(f"{root}/app1/console.log")

    def run(cid, *cmd):
        return hyperpy(root, "exec", cid, *cmd, check=True).stdout.decode()

    boot_ids = {run(c, "cat", "/proc/sys/kernel/random/boot_id") for c in ("pod1", "app1", "app2")}
    assert len(boot_ids) == 1  # the same guest kernel
    seen_by_app1 = run("app1", "ps", "-o", "args")
    assert "sleep 1002" in seen_by_app1
    assert "sleep 1001" not in seen_by_app1 and "sleep 1003" not in seen_by_app1
    seen_by_app2 = run("app2", "ps", "-o", "args")  # joined the sandbox's pid namespace
    assert "sleep 1001" in seen_by_app2 and "sleep 1003" in seen_by_app2
    assert "sleep 1002" not in seen_by_app2

    # deleting a member leaves the VM; the member is gone
    hyperpy(root, "delete", "--force", "app1", check=True)
    assert hyperpy(root, "state", "app1").returncode == 4
    assert json.loads(hyperpy(root, "state", "pod1", check=True).stdout)["status"] == "running"
    assert "sleep 1002" not in run("pod1", "ps", "-o", "args")
    hyperpy(root, "delete", "--force", "app2", check=True)
    hyperpy(root, "delete", "--force", "pod1", check=True)


def test_joining_a_missing_sandbox_names_the_annotation(root, bundle):
    b = with_spec(bundle, ["true"], {"io.hyperpy.sandbox": "nope"})
    res = hyperpy(root, "create", "--bundle", b, "lost1")
    assert res.returncode == 3
    assert b"/annotations/io.hyperpy.sandbox" in res.stderr and b"nope" in res.stderr


def test_namespace_path_outside_the_vm_is_refused(root, bundle):
    b = with_spec(bundle, ["true"], join={"network": f"/proc/{os.getpid()}/ns/net"})
    res = hyperpy(root, "run", "--bundle", b, "badns")
    assert res.returncode == 3, res.stderr
    assert b"/linux/namespaces/1/path" in res.stderr


def test_cri_dev_shm_is_one_tmpfs_in_the_guest_for_the_pod(root, bundle, tmp_path):
    from agent import linux

    shm = tmp_path / "sandbox-shm"  # what containerd's CRI binds at /dev/shm: a host tmpfs
    shm.mkdir()
    linux.mount("tmpfs", str(shm), "tmpfs", 0, "size=1m")
    try:

        def with_shm(args, annotations=None):
            b = with_spec(bundle, args, annotations)
            spec = json.load(open(f"{b}/config.json"))
            spec["mounts"] = [m for m in spec["mounts"] if m["destination"] != "/dev/shm"]
            spec["mounts"].append({"destination": "/dev/shm", "type": "bind",
                                   "source": str(shm), "options": ["rbind", "rw"]})  # fmt: skip
            json.dump(spec, open(f"{b}/config.json", "w"))
            return b

        create(root, with_shm(["sleep", "1001"]), "shmpod")
        hyperpy(root, "start", "shmpod", check=True)
        create(root, with_shm(["sleep", "1002"], {"io.hyperpy.sandbox": "shmpod"}), "shmapp")
        hyperpy(root, "start", "shmapp", check=True)
        hyperpy(root, "exec", "shmpod", "sh", "-c", "echo shared > /dev/shm/hello", check=True)
        out = hyperpy(root, "exec", "shmapp", "cat", "/dev/shm/hello", check=True)
        assert out.stdout == b"shared\n"
        assert os.listdir(shm) == []  # it stayed in the guest
        hyperpy(root, "delete", "--force", "shmapp", check=True)
        hyperpy(root, "delete", "--force", "shmpod", check=True)
    finally:
        linux.umount2(str(shm), linux.MNT_DETACH)
