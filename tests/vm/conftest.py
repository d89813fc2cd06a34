"""The hypervisor drivers the VM tests run on: a module whose tests matter on both
(``pytestmark = pytest.mark.usefixtures("driver")``) runs each of them once with the direct
QEMU driver and once with the libvirt driver (a libvirtd the session starts if none runs)."""

from __future__ import annotations

import pytest

DRIVERS = ("qemu", "libvirt")


def config_text(driver: str, **vm: object) -> str:
    """A hyperpy config choosing ``driver``, with more ``[vm]`` keys (TOML values)."""
    lines = ["[vm]", f'driver = "{driver}"']
    for key, value in vm.items():
        text = str(value).lower() if isinstance(value, bool) else repr(value).replace("'", '"')
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


@pytest.fixture(params=DRIVERS)
def driver(request, tmp_path_factory, monkeypatch):
    """The driver of this run of the test; every hyperpy it starts uses it."""
    if request.param == "libvirt":
        request.getfixturevalue("libvirtd")
    path = tmp_path_factory.mktemp("driver") / "config.toml"
    path.write_text(config_text(request.param))
    monkeypatch.setenv("HYPERPY_CONFIG", str(path))
    return request.param


@pytest.fixture
def vm_config(driver, tmp_path):
    """Factory: a config file for this test's driver with more [vm] keys; its path."""

    def make(**vm: object) -> str:
        path = tmp_path / "vm-config.toml"
        path.write_text(config_text(driver, **vm))
        return str(path)

    return make


@pytest.fixture
def files_mode(request, tmp_path_factory, monkeypatch):
    """``[vm] files`` for this test (indirect parametrization: "faithful" or "strict"), with
    the direct QEMU driver; every hyperpy it starts uses it."""
    mode = getattr(request, "param", "faithful")
    path = tmp_path_factory.mktemp("files") / "config.toml"
    path.write_text(config_text("qemu", files=mode))
    monkeypatch.setenv("HYPERPY_CONFIG", str(path))
    return mode
