"""What a pod's VM can leave on the host when its monitor is killed (SIGKILL, the OOM killer,
a crash), per hypervisor driver, and its removal: ``delete`` calls :func:`reap` once the
monitor is gone, whatever the driver, and knows none of them (the monitor's side of the
driver interface is ``vm/hypervisor.py``).

- ``qemu``: nothing: QEMU dies with its monitor (PDEATHSIG), its jail with it.
- ``libvirt``: the pod's view (``vm/view.py``) and its transient domain. AUTODESTROY ends
  the domain once libvirtd sees the monitor's connection close, but a libvirtd that was
  restarting then does not; so the domain is destroyed by name through a new connection.
- ``remote``: nothing on this host: the remote side stops QEMU when its connection goes,
  and the next run there removes the pod's directory.

This module imports nothing at its top: ``delete`` is a hot verb (the runc shim runs it for
every container); a driver's own modules are imported only for a pod of that driver.
"""

from __future__ import annotations


def reap(state_dir: str, driver: str) -> None:
    """Remove what the VM of the pod in ``state_dir`` (run by ``driver``) left behind; a
    pod whose monitor stopped it has nothing left, and this returns at once."""
    if driver == "libvirt":
        _libvirt(state_dir)


def _libvirt(state_dir: str) -> None:
    from hyperpy.vm import view

    if not view.remove_for(state_dir):  # the monitor stopped the domain and removed it
        return
    from hyperpy.config import load
    from hyperpy.launcher import with_site

    with_site()  # libvirt-python is in site-packages
    from hyperpy.vm.libvirt import destroy_by_name

    destroy_by_name(load().libvirt.uri, view.domain_name(state_dir))
