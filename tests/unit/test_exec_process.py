"""exec's process as runc builds it, and --cap (issue 9, item 4): pure, and through the CLI
where a bad flag must fail before anything else."""

from __future__ import annotations

import subprocess

import pytest

from hyperpy.errors import UsageError
from hyperpy.oci import process as oci_process
from hyperpy.oci.spec import default_spec
from tests.conftest import HYPERPY


def test_cap_is_added_as_runc_exec_adds_it():
    base = default_spec()["process"]
    base["capabilities"].pop("inheritable", None)
    p = oci_process.from_flags(base, ["sh"], caps=("CAP_SYS_ADMIN",))
    caps = p["capabilities"]
    for kind in ("bounding", "effective", "permitted"):
        assert caps[kind][-1] == "CAP_SYS_ADMIN" and caps[kind].count("CAP_SYS_ADMIN") == 1
    assert "CAP_SYS_ADMIN" not in (caps.get("ambient") or [])
    assert "inheritable" not in caps
    base["capabilities"]["inheritable"] = ["CAP_KILL"]
    caps = oci_process.from_flags(base, ["sh"], caps=("CAP_SYS_ADMIN",))["capabilities"]
    assert caps["ambient"] == ["CAP_SYS_ADMIN"] and caps["inheritable"] == ["CAP_KILL"]


def test_exec_keeps_the_specs_process_as_runc_does():
    base = default_spec()["process"]
    base["user"] = {"uid": 5, "gid": 6, "additionalGids": [7]}
    base["rlimits"] = [{"type": "RLIMIT_NOFILE", "hard": 100, "soft": 100}]
    p = oci_process.from_flags(base, ["id"], user="9", additional_gids=(8,), env=("A=1",),
                               tty=False)  # fmt: skip
    assert p["user"] == {"uid": 9, "gid": 6, "additionalGids": [7, 8]}
    assert p["rlimits"] == base["rlimits"] and p["env"][-1] == "A=1"
    assert p["capabilities"] == base["capabilities"] and p["terminal"] is False
    assert base["user"]["uid"] == 5  # the spec's process is not changed


@pytest.mark.parametrize("name", ["CAP_FLY", "sys_admin", ""])
def test_unknown_capabilities_are_usage_errors_naming_the_flag(name):
    with pytest.raises(UsageError, match="--cap"):
        oci_process.add_caps({"args": ["sh"]}, (name,))


def test_exec_with_an_unknown_cap_exits_2_before_anything(tmp_path):
    res = subprocess.run(
        [HYPERPY, "--root", str(tmp_path), "exec", "--cap", "CAP_FLY", "c1", "true"],
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert res.returncode == 2 and b"--cap 'CAP_FLY'" in res.stderr, res.stderr
    res = subprocess.run(
        [HYPERPY, "--root", str(tmp_path), "exec", "--cap", "sys_admin", "c1", "true"],
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert res.returncode == 2 and b"did you mean CAP_SYS_ADMIN" in res.stderr, res.stderr


def test_bad_user_is_a_usage_error():
    with pytest.raises(UsageError, match="--user"):
        oci_process.from_flags({}, ["sh"], user="root")
