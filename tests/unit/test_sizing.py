"""The pod's VM size, pure (hyperpy/vm/sizing.py): what containers need, the maximum, the
order of a resize's steps, and the VM's resources for QEMU and libvirt."""

from __future__ import annotations

import dataclasses

import pytest

from hyperpy.config import VMConfig
from hyperpy.errors import SpecError
from hyperpy.vm import sizing
from hyperpy.vm.devices import Balloon, Resources
from hyperpy.vm.sizing import Size, Step

MIB = 1 << 20


@pytest.mark.parametrize(
    "resources,size",
    [
        ([{}], Size(256, 1)),  # nothing asked: the configured size
        ([{"memory": {"limit": 64 * MIB}}], Size(256, 1)),  # 64 + 160 < 256
        ([{"memory": {"limit": 600 * MIB}}], Size(760, 1)),
        ([{"memory": {"limit": 600 * MIB + 1}}], Size(761, 1)),  # rounded up to a MiB
        ([{"memory": {"limit": -1}}], Size(256, 1)),  # unlimited
        # a pod: the limits add up, as the quotas do; a cpuset needs its highest CPU
        ([{"memory": {"limit": 300 * MIB}}, {"memory": {"limit": 200 * MIB}}], Size(660, 1)),
        ([{"cpu": {"quota": 150000, "period": 100000}}], Size(256, 2)),
        ([{"cpu": {"quota": 50000}}, {"cpu": {"quota": 60000, "period": 100000}}], Size(256, 2)),
        ([{"cpu": {"cpus": "3"}}], Size(256, 4)),
        ([{"cpu": {"quota": 900000, "period": 100000}}], Size(256, 4)),  # the host's 4 CPUs
    ],
)
def test_what_a_pod_needs(resources, size):
    assert sizing.need(resources, 256, 1, 160, host_cpus=4) == size


def test_a_bad_cpuset_names_its_field():
    with pytest.raises(SpecError) as exc:
        sizing.need([{"cpu": {"cpus": "2-1"}}], 256, 1, 160)
    assert exc.value.pointer == "/linux/resources/cpu/cpus"


def test_the_maximum_is_never_below_the_boot_size():
    assert sizing.maximum(Size(256, 1), 2048, 0, host_cpus=2) == Size(2048, 2)
    assert sizing.maximum(Size(3000, 3), 2048, 2, host_cpus=2) == Size(3000, 3)
    assert sizing.maximum(Size(256, 1), 0, 1) == Size(256, 1)


def test_update_replaces_the_fields_it_gives():
    now = {"memory": {"limit": 64 * MIB, "swap": 128 * MIB}, "cpu": {"quota": 1000}}
    merged = sizing.merge(now, {"memory": {"limit": 96 * MIB}, "pids": {"limit": 9}})
    assert merged == {"memory": {"limit": 96 * MIB, "swap": 128 * MIB},
                      "cpu": {"quota": 1000}, "pids": {"limit": 9}}  # fmt: skip
    assert now["memory"]["limit"] == 64 * MIB  # not changed in place


@pytest.mark.parametrize(
    "want,pointer,names",
    [(Size(3000, 1), "/memory/limit", "max_memory_mb"), (Size(256, 3), "/cpu", "max_vcpus")],
)
def test_past_the_maximum_is_refused_naming_the_field(want, pointer, names):
    with pytest.raises(sizing.TooBig) as exc:
        sizing.check(want, Size(2048, 2), "/etc/hyperpy/config.toml")
    assert exc.value.pointer == pointer
    assert names in str(exc.value) and "/etc/hyperpy/config.toml" in str(exc.value)
    sizing.check(Size(2048, 2), Size(2048, 2), "x")  # at the maximum: fine


def test_what_grows_grows_before_the_guest_what_shrinks_after():
    assert sizing.steps(Size(256, 1), Size(760, 2)) == [
        Step("ceiling", 760),
        Step("memory", 760),
        Step("vcpus", 2),
        Step("guest"),
    ]
    assert sizing.steps(Size(760, 2), Size(256, 1)) == [
        Step("guest"),
        Step("vcpus", 1),
        Step("memory", 256),
        Step("ceiling", 256),
    ]
    assert sizing.steps(Size(256, 1), Size(256, 1)) == [Step("guest")]


def test_the_vm_boots_at_its_maximum_with_a_balloon():
    cfg = dataclasses.replace(VMConfig(), max_memory_mb=2048, max_vcpus=2)
    res = sizing.resources(cfg, 400, None)
    assert res == Resources(vcpus=1, memory_mb=400, max_vcpus=2, max_memory_mb=2048)
    assert res.args(own_ram=False) == ["-smp", "2", "-m", "2048M"] and res.balloon
    # its own RAM a memfd: no transparent huge pages (devices.Resources)
    assert res.args()[4:] == ["-object", "memory-backend-memfd,id=ram,size=2048M,share=on",
                              "-machine", "memory-backend=ram"]  # fmt: skip
    # no maximum: the pod's own size, no balloon (as before resizing)
    off = sizing.resources(dataclasses.replace(cfg, max_memory_mb=0, max_vcpus=1), 400, 1)
    assert off.args() == ["-smp", "1", "-m", "400M"] and not off.balloon


def test_the_balloon_reports_free_pages_unless_templates_use_it():
    assert Balloon("mmio").args() == [
        "-device",
        "virtio-balloon-device,id=balloon0,free-page-reporting=on",
    ]
    assert Balloon("pci", reporting=False).args() == [
        "-device",
        "virtio-balloon-pci,id=balloon0,free-page-reporting=off",
    ]


def test_a_template_serves_pods_of_every_size():
    """The VM's argv (a template's key) depends on the maximum, not the pod's size; the
    guest's kernel onlines one vCPU, the agent the pod's."""
    from hyperpy.vm import plan

    cfg = dataclasses.replace(VMConfig(), max_memory_mb=2048, max_vcpus=2)

    def argv(memory_mb, vcpus):
        return plan.build_spec(cfg, "tcg", plan.Placeholder(), jailed=True, templated=True,
                               memory_mb=memory_mb, vcpus=vcpus).argv()  # fmt: skip

    assert argv(256, 1) == argv(1184, 2)
    assert "maxcpus=1" in " ".join(argv(256, 1))
    assert "free-page-reporting=off" in " ".join(argv(256, 1))
