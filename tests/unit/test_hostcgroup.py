"""Resolving cgroupsPath on the host, as runc does for cgroupfs and systemd forms."""

from __future__ import annotations

import pytest

from hyperpy.errors import SpecError
from hyperpy.hostcgroup import relative_path, systemd_path


def test_cgroupfs_paths() -> None:
    assert relative_path("/default/abc", "abc", False) == "default/abc"
    assert relative_path("kubepods/pod1/c", "c", False) == "kubepods/pod1/c"
    assert relative_path("", "abc", False) == "hyperpy/abc"
    assert relative_path("/a/../../b", "x", False) == "b"  # cannot climb above the root


@pytest.mark.parametrize(
    "spec,path",
    [
        ("system.slice:docker:abc", "system.slice/docker-abc.scope"),
        ("kubepods-besteffort-pod1.slice:cri-containerd:c1",
         "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/"
         "cri-containerd-c1.scope"),
        (":hyperpy:x", "system.slice/hyperpy-x.scope"),
        ("-.slice:p:n", "p-n.scope"),
    ],
)  # fmt: skip
def test_systemd_paths(spec: str, path: str) -> None:
    assert systemd_path(spec) == path


@pytest.mark.parametrize("spec", ["abc", "a:b", "system:docker:x"])
def test_bad_systemd_paths_name_the_field(spec: str) -> None:
    with pytest.raises(SpecError) as err:
        systemd_path(spec)
    assert err.value.pointer == "/linux/cgroupsPath"
