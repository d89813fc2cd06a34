"""config.json loading and validation, the default spec, the features document, syscall tables."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from agent import syscalls
from hyperpy.errors import SpecError, UsageError
from hyperpy.oci.spec import default_spec, features
from hyperpy.oci.validate import KNOWN_CAPS, SCHEMA_PATH, load_bundle, pointer, validate_spec


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    (tmp_path / "rootfs").mkdir()
    return tmp_path


def write(bundle: Path, spec: object) -> None:
    (bundle / "config.json").write_text(json.dumps(spec, indent=2))


def spec_error(bundle: Path, spec: object, **kw: bool) -> SpecError:
    write(bundle, spec)
    with pytest.raises(SpecError) as info:
        load_bundle(str(bundle), **kw)
    err = info.value
    assert err.path == str(bundle / "config.json")
    assert str(err).startswith(f"{err.path}#{err.pointer}: ")
    return err


def test_schema_is_valid_draft_2020_12():
    import jsonschema

    with open(SCHEMA_PATH) as f:
        jsonschema.Draft202012Validator.check_schema(json.load(f))


@pytest.mark.parametrize("rootless", [False, True])
def test_default_spec_passes(bundle: Path, rootless: bool):
    spec = default_spec(rootless=rootless)
    write(bundle, spec)
    assert load_bundle(str(bundle)) == spec


def test_default_spec_is_runc_like():
    spec = default_spec()
    proc = spec["process"]
    assert proc["terminal"] is True and proc["args"] == ["sh"] and proc["cwd"] == "/"
    assert "TERM=xterm" in proc["env"]
    assert proc["capabilities"]["bounding"] == [
        "CAP_AUDIT_WRITE",
        "CAP_KILL",
        "CAP_NET_BIND_SERVICE",
    ]
    assert proc["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    assert spec["root"] == {"path": "rootfs", "readonly": True}
    assert spec["hostname"] == "hyperpy"
    assert [m["destination"] for m in spec["mounts"]] == [
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
        "/sys/fs/cgroup",
    ]
    types = [ns["type"] for ns in spec["linux"]["namespaces"]]
    assert types == ["pid", "network", "ipc", "uts", "mount", "cgroup"]
    assert spec["linux"]["resources"]["devices"] == [{"allow": False, "access": "rwm"}]
    # a fresh dict each call: callers mutate it
    spec["process"]["args"].append("x")
    assert default_spec()["process"]["args"] == ["sh"]


def test_rootless_spec_maps_the_caller():
    spec = default_spec(rootless=True)
    linux = spec["linux"]
    types = [ns["type"] for ns in linux["namespaces"]]
    assert "network" not in types and types.count("user") == 1
    assert linux["uidMappings"] == [{"containerID": 0, "hostID": os.geteuid(), "size": 1}]
    assert linux["gidMappings"] == [{"containerID": 0, "hostID": os.getegid(), "size": 1}]
    sys_mount = next(m for m in spec["mounts"] if m["destination"] == "/sys")
    assert sys_mount["type"] == "none" and "rbind" in sys_mount["options"]
    assert not any(o.startswith("gid=") for m in spec["mounts"] for o in m.get("options", []))
    assert "resources" not in linux


def set_path(spec: dict, path: str, value: object) -> None:
    parts: list[str | int] = [int(p) if p.isdigit() else p for p in path.strip("/").split("/")]
    target = spec
    for p in parts[:-1]:
        target = target[p]  # type: ignore[index]
    target[parts[-1]] = value  # type: ignore[index]


def delete(path: str) -> Callable[[dict], None]:
    def run(spec: dict) -> None:
        parts = path.strip("/").split("/")
        target = spec
        for p in parts[:-1]:
            target = target[int(p) if p.isdigit() else p]
        del target[parts[-1]]

    return run


def put(path: str, value: object) -> Callable[[dict], None]:
    return lambda spec: set_path(spec, path, value)


def seccomp(names: list[str], **extra: object) -> dict:
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": names, "action": "SCMP_ACT_ALLOW"}],
        **extra,
    }


def add_userns(spec: dict) -> None:
    spec["linux"]["namespaces"].append({"type": "user"})


CASES: list[tuple[str, Callable[[dict], None], str]] = [
    # schema: types, ranges, enums, required members
    ("ociVersion not a string", put("/ociVersion", 1), "/ociVersion"),
    ("args item not a string", put("/process/args", ["sh", 3]), "/process/args/1"),
    ("uid negative", put("/process/user/uid", -1), "/process/user/uid"),
    ("uid too big", put("/process/user/uid", 2**32), "/process/user/uid"),
    ("gid missing", delete("/process/user/gid"), "/process/user/gid"),
    ("env without =", put("/process/env/1", "TERM"), "/process/env/1"),
    ("env empty name", put("/process/env/0", "=x"), "/process/env/0"),
    ("terminal not bool", put("/process/terminal", "yes"), "/process/terminal"),
    ("cwd missing", delete("/process/cwd"), "/process/cwd"),
    ("rlimit without soft", delete("/process/rlimits/0/soft"), "/process/rlimits/0/soft"),
    ("mount option int", put("/mounts/1/options/2", 755), "/mounts/1/options/2"),
    ("mount no destination", delete("/mounts/3/destination"), "/mounts/3/destination"),
    ("root without path", put("/root", {"readonly": True}), "/root/path"),
    ("bad namespace type", put("/linux/namespaces/1/type", "net"), "/linux/namespaces/1/type"),
    ("annotation not string", put("/annotations", {"a": 1}), "/annotations/a"),
    ("sysctl value int", put("/linux/sysctl", {"net.ipv4.ip_forward": 1}),
     "/linux/sysctl/net.ipv4.ip_forward"),
    ("hook timeout 0", put("/hooks", {"prestart": [{"path": "/bin/true", "timeout": 0}]}),
     "/hooks/prestart/0/timeout"),
    ("hook without path", put("/hooks", {"poststop": [{"args": []}]}), "/hooks/poststop/0/path"),
    ("memory limit string", put("/linux/resources/memory", {"limit": "1G"}),
     "/linux/resources/memory/limit"),
    ("cpus not string", put("/linux/resources/cpu", {"cpus": 2}), "/linux/resources/cpu/cpus"),
    ("unified value int", put("/linux/resources/unified", {"memory.max": 5}),
     "/linux/resources/unified/memory.max"),
    ("bad seccomp action", put("/linux/seccomp", {"defaultAction": "ALLOW"}),
     "/linux/seccomp/defaultAction"),
    ("bad seccomp arch", put("/linux/seccomp", seccomp(["read"], architectures=["x86_64"])),
     "/linux/seccomp/architectures/0"),
    ("bad seccomp op",
     put("/linux/seccomp", {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
         {"names": ["kill"], "action": "SCMP_ACT_ERRNO",
          "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_XX"}]}]}),
     "/linux/seccomp/syscalls/0/args/0/op"),
    ("bad propagation", put("/linux/rootfsPropagation", "sideways"), "/linux/rootfsPropagation"),
    # semantics
    ("no root", delete("/root"), "/root"),
    ("rootfs missing", put("/root/path", "nope"), "/root/path"),
    ("no process", delete("/process"), "/process"),
    ("empty args", put("/process/args", []), "/process/args"),
    ("missing args", delete("/process/args"), "/process/args"),
    ("relative cwd", put("/process/cwd", "tmp"), "/process/cwd"),
    ("unknown rlimit", put("/process/rlimits/0/type", "RLIMIT_FOO"), "/process/rlimits/0/type"),
    ("soft above hard", put("/process/rlimits/0/soft", 4096), "/process/rlimits/0/soft"),
    ("rshared volume",
     put("/mounts/5", {"destination": "/data", "type": "bind", "source": "/tmp",
                       "options": ["rbind", "rshared"]}),
     "/mounts/5/options/1"),
    ("relative hook path", put("/hooks", {"createRuntime": [{"path": "true"}]}),
     "/hooks/createRuntime/0/path"),
    ("duplicate namespace", put("/linux/namespaces/1", {"type": "pid"}),
     "/linux/namespaces/1/type"),
    ("relative namespace path", put("/linux/namespaces/0/path", "proc/1/ns/pid"),
     "/linux/namespaces/0/path"),
    ("hostname without uts", lambda spec: spec["linux"].update(namespaces=[{"type": "pid"}]),
     "/hostname"),
    ("empty sysctl key", put("/linux/sysctl", {"": "1"}), "/linux/sysctl/"),
    ("userns without uid mappings", add_userns, "/linux/uidMappings"),
    ("mappings without userns",
     put("/linux/gidMappings", [{"containerID": 0, "hostID": 1000, "size": 1}]),
     "/linux/gidMappings"),
    ("notify as default", put("/linux/seccomp", {"defaultAction": "SCMP_ACT_NOTIFY"}),
     "/linux/seccomp/defaultAction"),
    ("notify without listener",
     put("/linux/seccomp", {"defaultAction": "SCMP_ACT_ALLOW",
                            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]}),
     "/linux/seccomp/syscalls/0/action"),
    ("notify with a listener",
     put("/linux/seccomp", {"defaultAction": "SCMP_ACT_ALLOW",
                            "listenerPath": "/run/a.sock",
                            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]}),
     "/linux/seccomp/syscalls/0/action"),
]  # fmt: skip


# What runc runs, hyperpy runs: each of these was refused once (issue 23); runc takes it
# with a warning (capabilities, mount destinations, device paths) or silently.
ACCEPTED = [
    ("no ociVersion", delete("/ociVersion")),
    ("ociVersion 2", put("/ociVersion", "2.0.0")),
    ("seccomp rule without names",
     put("/linux/seccomp", {"defaultAction": "SCMP_ACT_ALLOW",
                            "syscalls": [{"action": "SCMP_ACT_ERRNO"}]})),
    ("unknown capability", put("/process/capabilities/bounding/0", "CAP_FLY")),
    ("capability without prefix", put("/process/capabilities/permitted/2", "KILL")),
    ("duplicate rlimit",
     put("/process/rlimits", [{"type": "RLIMIT_NOFILE", "hard": 1, "soft": 1}] * 2)),
    ("relative mount destination", put("/mounts/2/destination", "dev/pts")),
    ("cgroupsPath with colons", put("/linux/cgroupsPath", "system.slice:hyperpy:c1")),
    ("cgroupsPath with a newline", put("/linux/cgroupsPath", "/hyperpy/a\nb")),
    ("syscall of another arch", put("/linux/seccomp", seccomp(["read", "pciconfig_iobase"]))),
    ("unknown syscall", put("/linux/seccomp", seccomp(["read", "nonsense"]))),
    ("relative device path",
     put("/linux/devices", [{"type": "c", "path": "dev/fuse", "major": 10, "minor": 229}])),
    ("char device without minor", put("/linux/devices", [{"type": "c", "path": "/dev/fuse",
                                                         "major": 10}])),
]  # fmt: skip


@pytest.mark.parametrize("mutate", [pytest.param(m, id=name) for name, m in ACCEPTED])
def test_accepted_as_runc_accepts_it(bundle: Path, mutate: Callable[[dict], None]):
    spec = default_spec()
    mutate(spec)
    write(bundle, spec)
    load_bundle(str(bundle))


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [pytest.param(m, e, id=name) for name, m, e in CASES],
)
def test_error_pointer(bundle: Path, mutate: Callable[[dict], None], expected: str):
    spec = default_spec()
    mutate(spec)
    err = spec_error(bundle, spec)
    assert err.pointer == expected, str(err)


def test_top_level_must_be_an_object(bundle: Path):
    err = spec_error(bundle, ["not", "a", "spec"])
    assert err.pointer == ""
    assert "expected an object" in str(err)


def test_message_says_found_and_expected(bundle: Path):
    spec = default_spec()
    spec["process"]["user"]["uid"] = -1
    msg = str(spec_error(bundle, spec))
    assert "found -1" in msg and ">= 0" in msg


def test_first_error_in_path_order_and_count(bundle: Path):
    spec = default_spec()
    spec["process"]["args"] = [1]
    spec["process"]["terminal"] = "no"
    err = spec_error(bundle, spec)
    assert err.pointer == "/process/args/0"
    assert "1 more schema problem" in str(err)


def test_unknown_capabilities_are_ignored_with_runcs_warning(bundle: Path, caplog):
    spec = default_spec()
    spec["process"]["capabilities"]["effective"] = ["net_admin", "CAP_NOT_YET_INVENTED"]
    write(bundle, spec)
    with caplog.at_level(logging.WARNING):
        load_bundle(str(bundle))
    assert "ignoring unknown or unavailable capabilities: CAP_NOT_YET_INVENTED, net_admin" in (
        caplog.text
    )


def test_cgroups_path_systemd(bundle: Path):
    spec = default_spec()
    spec["linux"]["cgroupsPath"] = "system.slice:hyperpy:c1"
    write(bundle, spec)
    load_bundle(str(bundle), systemd_cgroup=True)
    for bad in ("/hyperpy/c1", "a:b", "system.slice:hyperpy:", "system:hyperpy:c1"):
        spec["linux"]["cgroupsPath"] = bad
        err = spec_error(bundle, spec, systemd_cgroup=True)
        assert err.pointer == "/linux/cgroupsPath"
        assert "slice:prefix:name" in str(err)
    spec["linux"]["cgroupsPath"] = "/hyperpy/c1"
    write(bundle, spec)
    load_bundle(str(bundle))
    spec["linux"]["cgroupsPath"] = "hyperpy/c1"
    write(bundle, spec)
    load_bundle(str(bundle))
    # colons without --systemd-cgroup: a cgroupfs path, as runc takes it
    spec["linux"]["cgroupsPath"] = "kubepods-burstable-pod1.slice:cri-containerd:c1"
    write(bundle, spec)
    load_bundle(str(bundle))


def test_valid_optional_sections(bundle: Path):
    spec = default_spec()
    spec["linux"]["namespaces"].append({"type": "user"})
    spec["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    spec["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    spec["linux"]["sysctl"] = {"net.ipv4.ip_forward": "1"}
    spec["linux"]["resources"].update(
        memory={"limit": 1 << 30, "swap": -1, "swappiness": 0, "disableOOMKiller": False},
        cpu={"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"},
        pids={"limit": -1},
        blockIO={"weight": 500, "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1}]},
        hugepageLimits=[{"pageSize": "2MB", "limit": 0}],
        unified={"memory.high": "max"},
    )
    spec["linux"]["seccomp"] = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "flags": ["SECCOMP_FILTER_FLAG_LOG"],
        "syscalls": [
            # Docker's default profile lists i386-only and other-arch names on every arch
            {"names": ["read", "clone3", "_llseek", "chown32", "recv"], "action": "SCMP_ACT_ALLOW"},
            {
                "names": ["socket"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}],
            },
        ],
    }
    spec["hooks"] = {"poststop": [{"path": "/bin/true", "args": ["true"], "timeout": 5}]}
    spec["annotations"] = {"io.example/x": "y"}
    spec["linux"]["rootfsPropagation"] = "rslave"
    spec["process"]["oomScoreAdj"] = -999
    spec["process"]["user"]["additionalGids"] = [10, 4294967295]
    spec["x-vendor-extension"] = {"anything": [1, 2]}  # unknown members are extensions
    spec["process"]["vendorField"] = 1
    write(bundle, spec)
    assert load_bundle(str(bundle)) == spec


def test_absolute_root_path(bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    rootfs = tmp_path_factory.mktemp("elsewhere")
    spec = default_spec()
    spec["root"]["path"] = str(rootfs)
    write(bundle, spec)
    load_bundle(str(bundle))
    (bundle / "file").write_text("")
    spec["root"]["path"] = "file"
    err = spec_error(bundle, spec)
    assert err.pointer == "/root/path" and "not a directory" in str(err)


def test_invalid_json_reports_line_and_column(bundle: Path):
    (bundle / "config.json").write_text('{\n  "ociVersion": "1.1.0",\n  "root": {,\n}\n')
    with pytest.raises(SpecError) as info:
        load_bundle(str(bundle))
    msg = str(info.value)
    assert "line 3 column" in msg and info.value.pointer == ""
    assert str(bundle / "config.json") in msg


def test_nan_is_not_json(bundle: Path):
    (bundle / "config.json").write_text('{"ociVersion": NaN}')
    with pytest.raises(SpecError, match="NaN"):
        load_bundle(str(bundle))


def test_not_utf8(bundle: Path):
    (bundle / "config.json").write_bytes(b'{"ociVersion": "\xff"}')
    with pytest.raises(SpecError, match="UTF-8"):
        load_bundle(str(bundle))


def test_missing_config(bundle: Path):
    with pytest.raises(SpecError, match="hyperpy spec") as info:
        load_bundle(str(bundle))
    assert info.value.path == str(bundle / "config.json")


def test_config_is_a_directory(bundle: Path):
    (bundle / "config.json").mkdir()
    with pytest.raises(SpecError, match="cannot read"):
        load_bundle(str(bundle))


def test_missing_bundle(tmp_path: Path):
    with pytest.raises(UsageError, match="--bundle"):
        load_bundle(str(tmp_path / "nope"))


def test_validate_spec_resolves_root_against_the_file(bundle: Path):
    validate_spec(default_spec(), str(bundle / "config.json"))
    with pytest.raises(SpecError):
        validate_spec(default_spec(), str(bundle / "sub" / "config.json"))


def test_pointer_escaping():
    assert pointer("annotations", "a/b~c", 0) == "/annotations/a~1b~0c/0"
    assert pointer() == ""


def test_schema_pointer_is_escaped(bundle: Path):
    spec = default_spec()
    spec["annotations"] = {"io.example/a~b": 1}
    assert spec_error(bundle, spec).pointer == "/annotations/io.example~1a~0b"


def test_features():
    doc = features()
    assert set(doc) == {
        "ociVersionMin",
        "ociVersionMax",
        "hooks",
        "mountOptions",
        "linux",
        "annotations",
    }
    assert doc["ociVersionMin"] == "1.0.0" and doc["ociVersionMax"] == "1.1.0"
    assert doc["hooks"] == [
        "prestart",
        "createRuntime",
        "createContainer",
        "startContainer",
        "poststart",
        "poststop",
    ]
    linux = doc["linux"]
    assert set(linux) >= {"namespaces", "capabilities", "cgroup", "seccomp", "apparmor", "selinux"}
    assert linux["capabilities"][0] == "CAP_CHOWN"
    assert linux["capabilities"][-1] == "CAP_CHECKPOINT_RESTORE"
    assert len(linux["capabilities"]) == 41
    assert linux["cgroup"] == {"v1": False, "v2": True, "systemd": True, "systemdUser": False}
    assert linux["seccomp"]["enabled"] is True
    assert "SCMP_CMP_MASKED_EQ" in linux["seccomp"]["operators"]
    assert set(linux["seccomp"]["archs"]) == {"SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"}
    assert linux["apparmor"] == {"enabled": False} and linux["selinux"] == {"enabled": False}
    assert "io.hyperpy.version" in doc["annotations"]
    json.dumps(doc)


def test_features_match_the_schema():
    with open(SCHEMA_PATH) as f:
        defs = json.load(f)["$defs"]
    doc = features()["linux"]
    assert set(doc["seccomp"]["actions"]) == set(defs["SeccompAction"]["enum"])
    ns_enum = defs["Linux"]["properties"]["namespaces"]["items"]["properties"]["type"]["enum"]
    assert set(doc["namespaces"]) == set(ns_enum)


def test_known_caps_match_the_kernel_header():
    header = "/usr/include/linux/capability.h"
    if not os.path.exists(header):
        pytest.skip(f"{header} is not installed")
    with open(header) as f:
        found = dict(re.findall(r"^#define (CAP_[A-Z_]+)\s+(\d+)\s*$", f.read(), re.M))
    caps = {k: int(v) for k, v in found.items() if k != "CAP_LAST_CAP"}
    assert caps == KNOWN_CAPS


def test_syscall_tables():
    assert {"read", "write", "openat", "clone3"} <= syscalls.X86_64_SYSCALLS
    assert "nonsense" not in syscalls.KNOWN_SYSCALLS
    assert syscalls.X86_64_NUMBERS["read"] == 0 and syscalls.X86_64_NUMBERS["clone3"] == 435
    assert "_llseek" in syscalls.X86_ONLY and "_llseek" not in syscalls.X86_64_SYSCALLS
    assert syscalls.KNOWN_SYSCALLS >= syscalls.X86_64_SYSCALLS | syscalls.NEWER


def test_syscall_table_agrees_with_this_machine():
    header = os.path.join(syscalls.HEADERS, "unistd_64.h")
    if not os.path.exists(header):
        pytest.skip(f"{header} is not installed")
    here = syscalls._read("unistd_64.h")
    # newer headers only add syscalls; regenerate with `python -m agent.syscalls`
    assert {k: here.get(k) for k in syscalls.X86_64_NUMBERS} == syscalls.X86_64_NUMBERS
