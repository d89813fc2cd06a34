"""Bad input refused before any VM boots (issue 9, items 4, 7 and 8): through the real CLI,
each error names what, where (file and JSON pointer, or flag) and the fix, exits with its
documented code, and leaves nothing under --root. No VM is needed: a check that let the
input through would go on to boot one (and fail differently, or hang)."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from hyperpy.oci import document
from hyperpy.oci.spec import default_spec
from hyperpy.preflight import MAX_ARG_STRLEN, long_string
from hyperpy.verbs.create import _vm_request
from tests.conftest import HYPERPY, processes_under


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    b = tmp_path / "bundle"
    (b / "rootfs").mkdir(parents=True)
    return b


def spec(**changes: object) -> dict:
    s = default_spec()
    s["process"]["terminal"] = False
    s["process"]["args"] = ["true"]
    for ptr, value in changes.items():
        *parents, last = ptr.split("__")
        node = s
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return s


def create(tmp_path: Path, bundle: Path, *flags: str, cid: str = "c1") -> tuple[int, str]:
    root = tmp_path / "root"
    res = subprocess.run(
        [HYPERPY, "--root", str(root), "create", "--bundle", str(bundle), *flags, cid],
        capture_output=True,
        timeout=30,  # a FIFO config.json used to block forever
    )
    assert not root.exists() or not list(root.iterdir()), "state left behind"
    assert not processes_under(str(root))
    return res.returncode, res.stderr.decode()


def write(bundle: Path, s: object) -> None:
    (bundle / "config.json").write_text(json.dumps(s))


def test_deeply_nested_config(tmp_path, bundle):
    (bundle / "config.json").write_text('{"a": ' + "[" * 100000 + "]" * 100000 + "}")
    rc, err = create(tmp_path, bundle)
    assert rc == 3, err
    assert "nested more than 64 levels" in err and "line 1 column" in err
    assert "Traceback" not in err and str(bundle / "config.json") in err
    s = spec()
    s["x-extension"] = json.loads("[" * 80 + "]" * 80)
    write(bundle, s)
    rc, err = create(tmp_path, bundle)
    assert rc == 3 and "#/x-extension/0/0/" in err, err


def test_an_argument_longer_than_execve_takes(tmp_path, bundle):
    write(bundle, spec(process__args=["sh", "-c", "x" * (1 << 20)]))
    rc, err = create(tmp_path, bundle)
    assert rc == 3, err
    assert "#/process/args/2:" in err and "MAX_ARG_STRLEN" in err
    assert long_string({"args": ["echo", "x" * (MAX_ARG_STRLEN - 1)]}) is None  # the max
    assert long_string({"env": ["x" * MAX_ARG_STRLEN]})[0] == "/env/0"


def test_a_spec_too_big_for_one_message_names_its_largest_value(tmp_path, bundle):
    env = [f"V{i}={'y' * 100000}" for i in range(12)]
    write(bundle, spec(process__env=env))
    rc, err = create(tmp_path, bundle)
    assert rc == 3, err
    assert "#/process/env/" in err and "frame limit" in err


def test_pid_file_in_a_missing_directory(tmp_path, bundle):
    write(bundle, spec())
    rc, err = create(tmp_path, bundle, "--pid-file", str(tmp_path / "nodir" / "x.pid"))
    assert rc == 2, err
    assert f"--pid-file {tmp_path}/nodir/x.pid" in err and "does not exist" in err


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "huge", "directory"])
def test_config_json_must_be_a_bounded_regular_file(tmp_path, bundle, kind):
    path = bundle / "config.json"
    if kind == "dev-zero":
        path.symlink_to("/dev/zero")
        word = "character device"
    elif kind == "fifo":
        os.mkfifo(path)
        word = "FIFO"
    elif kind == "huge":
        with open(path, "wb") as f:
            f.truncate(document.MAX_BYTES + 1)
        word = "larger than 4 MiB"
    else:
        path.mkdir()
        word = "directory"
    rc, err = create(tmp_path, bundle)
    assert rc == 3, err
    assert word in err and str(path) in err


def test_mount_over_the_root(tmp_path, bundle):
    s = spec()
    s["mounts"].append({"destination": "/", "type": "tmpfs", "source": "tmpfs"})
    write(bundle, s)
    rc, err = create(tmp_path, bundle)
    assert rc == 3, err
    assert f"#/mounts/{len(s['mounts']) - 1}/destination" in err and "/root/path" in err


def test_a_memory_limit_too_small_to_start(tmp_path, bundle):
    write(bundle, spec(linux__resources={"memory": {"limit": 1}}))
    rc, err = create(tmp_path, bundle)
    assert rc == 3, err
    assert "#/linux/resources/memory/limit" in err and "MiB" in err


def test_resources_the_guest_would_refuse_fail_before_the_boot(tmp_path, bundle):
    write(bundle, spec(linux__resources={"memory": {"limit": 64 << 20, "swap": 1 << 20}}))
    rc, err = create(tmp_path, bundle)
    assert rc == 3 and "#/linux/resources/memory/swap" in err, err


def test_cpus_the_host_lacks_and_mems_the_vm_lacks(tmp_path, bundle):
    write(bundle, spec(linux__resources={"cpu": {"cpus": f"0-{os.cpu_count()}"}}))
    rc, err = create(tmp_path, bundle)
    assert rc == 3 and "#/linux/resources/cpu/cpus" in err and "online" in err, err
    write(bundle, spec(linux__resources={"cpu": {"cpus": "1-0"}}))
    rc, err = create(tmp_path, bundle)
    assert rc == 3 and "#/linux/resources/cpu/cpus" in err, err
    write(bundle, spec(linux__resources={"cpu": {"mems": "1"}}))
    rc, err = create(tmp_path, bundle)
    assert rc == 3 and "#/linux/resources/cpu/mems" in err, err


def test_a_missing_console_socket_is_named(tmp_path, bundle):
    write(bundle, spec(process__terminal=True))
    sock = tmp_path / "console.sock"
    rc, err = create(tmp_path, bundle, "--console-socket", str(sock))
    assert rc == 2, err
    assert f"--console-socket {sock}" in err
    sock.write_text("")
    rc, err = create(tmp_path, bundle, "--console-socket", str(sock))
    assert rc == 2 and "not a unix socket" in err, err


@pytest.mark.parametrize("cid", ["prx\n", "..", ".", "a\nb", "a/b"])
def test_bad_ids_are_refused_first(tmp_path, bundle, cid):
    write(bundle, spec())
    rc, err = create(tmp_path, bundle, cid=cid)
    assert rc == 2, err
    assert "invalid container id" in err and "cgroup" not in err


def test_a_cgroups_path_with_a_nul(tmp_path, bundle):
    write(bundle, spec(linux__cgroupsPath="/hyperpy/a\0b"))
    rc, err = create(tmp_path, bundle)
    assert rc == 3 and "#/linux/cgroupsPath" in err and "NUL" in err, err


# --- documents -----------------------------------------------------------------------------


def test_documents_from_a_stream_are_bounded_too():
    with pytest.raises(document.DocumentError, match="larger than"):
        document.read_stream(io.BytesIO(b" " * (document.MAX_BYTES + 1)))
    assert document.parse(document.read_stream(io.BytesIO(b'{"a": [1]}'))) == {"a": [1]}


def test_depth_limit_is_exact():
    ok = json.loads("[" * document.MAX_DEPTH + "]" * document.MAX_DEPTH)
    assert document.parse(json.dumps(ok).encode()) == ok
    with pytest.raises(document.DocumentError) as err:
        document.parse(("[" * (document.MAX_DEPTH + 1) + "]" * (document.MAX_DEPTH + 1)).encode())
    assert err.value.pointer == "/0" * document.MAX_DEPTH


@pytest.mark.parametrize("flag", ["--process", "--resources"])
def test_flag_files_are_read_as_documents(tmp_path, flag):
    fifo = tmp_path / "p.json"
    os.mkfifo(fifo)
    verb = ["exec" if flag == "--process" else "update", flag, str(fifo), "c1"]
    res = subprocess.run([HYPERPY, "--root", str(tmp_path / "root"), *verb],
                         capture_output=True, timeout=30)  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert f"{flag} {fifo}" in res.stderr.decode() and b"FIFO" in res.stderr


# --- VM size for CPU settings (item 8) -----------------------------------------------------


@pytest.mark.parametrize(
    "cpu,vcpus",
    [({}, 0), ({"quota": 50000, "period": 100000}, 1), ({"cpus": "0-1", "quota": 50000,
      "period": 100000}, 2), ({"cpus": "1"}, 2), ({"cpus": "0"}, 1)],
)  # fmt: skip
def test_the_vm_has_the_cpus_its_cpuset_names(cpu, vcpus):
    if cpu.get("cpus") and max(int(x) for x in cpu["cpus"].split("-")) >= (os.cpu_count() or 1):
        pytest.skip("this host has fewer CPUs than the case names")
    s = spec(linux__resources={"cpu": cpu})
    assert _vm_request(s, 256, 160)["vcpus"] == vcpus


def test_console_socket_that_listens_passes(tmp_path, bundle):
    """A real listening socket gets past the check (to a later one: the mount)."""
    s = spec(process__terminal=True)
    s["mounts"].append({"destination": "/", "type": "tmpfs", "source": "tmpfs"})
    write(bundle, s)
    path = str(tmp_path / "c.sock")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(path)
        sock.listen(1)
        rc, err = create(tmp_path, bundle, "--console-socket", path, "--pid-file",
                         str(tmp_path / "p"))  # fmt: skip
    assert rc == 3 and "/destination" in err, err


def test_update_resources_are_checked_as_the_guest_would():
    from hyperpy.errors import UsageError
    from hyperpy.preflight import update_resources

    update_resources({"memory": {"swap": 64 << 20}})  # swap alone: against the current limit
    update_resources({"cpu": {"quota": 20000}})  # the period stays
    with pytest.raises(UsageError, match=r"#/cpu/realtimePeriod"):
        update_resources({"cpu": {"realtimePeriod": 1000}})
    with pytest.raises(UsageError, match=r"#/memory/limit"):
        update_resources({"memory": {"limit": "lots"}})
    with pytest.raises(UsageError, match=r"#/cpu/cpus"):
        update_resources({"cpu": {"cpus": 1}})


def test_process_files_are_checked_with_pointers(tmp_path):
    from hyperpy.errors import UsageError
    from hyperpy.oci.process import check_document

    assert check_document({"args": ["sh"], "cwd": "/"}, "--process p")
    for bad, ptr in [({"args": "sh"}, "/args"), ({"args": ["sh"], "cwd": "tmp"}, "/cwd"),
                     ({"args": ["sh"], "user": {"uid": -1}}, "/user/uid"),
                     ({"args": ["sh"], "capabilities": {"bounding": ["CAP_FLY"]}},
                      "/capabilities/bounding/0"), ([], "")]:  # fmt: skip
        with pytest.raises(UsageError) as err:
            check_document(bad, "--process p")
        assert str(err.value).startswith(f"--process p#{ptr}:"), err.value


@pytest.mark.parametrize("kind", ["file", "unmakeable"])
def test_a_bad_root_is_a_usage_error(tmp_path, bundle, kind):
    write(bundle, spec())
    root = tmp_path / "rootfile"
    if kind == "file":
        root.write_text("")
    else:
        root = Path("/proc/hyperpy-no-such-root")
    verbs = [["create", "--bundle", str(bundle), "c1"]] + ([["list"]] if kind == "file" else [])
    for args in verbs:
        res = subprocess.run([HYPERPY, "--root", str(root), *args], capture_output=True,
                             timeout=30)  # fmt: skip
        assert res.returncode == 2, res.stderr
        assert f"--root {root}".encode() in res.stderr and b"Traceback" not in res.stderr
