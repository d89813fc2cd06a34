"""QEMU's confinement, after Firecracker's jailer: what QEMU may reach, and entering it.

Owns the plan of a pod's jail (pure: :func:`plan`, :meth:`Jail.wrap`). Entering it is
``vm/jailer.py``, run as root by the monitor in place of QEMU (``python -S -c BOOTSTRAP TOP
PLAN_JSON -- QEMU_ARGV...``: lean imports, it is on every boot's path); it execs QEMU once
confined:

1. mount, network and IPC namespaces of its own: host mounts still propagate in (a pod
   member's rootfs bound into the share after boot reaches QEMU), nothing propagates out;
   QEMU reaches no network and no abstract unix socket of the host;
2. its root: a tmpfs on ``R/ID/jail`` with only ``/usr`` (read-only: the binary, its
   libraries and firmware) and the merged-/usr links, the kernel and initrd (read-only),
   the two 9p exports at ``/share`` and ``/image``, ``/dev/null``, ``/dev/zero``,
   ``/dev/urandom`` (and ``/dev/kvm`` or ``/dev/vhost-vsock`` when used), and a ``/proc``
   that shows only its own processes (``hidepid=invisible,subset=pid``); pivot_root into
   it, the old root detached, the root read-only;
3. a uid and gid of its own, ``uid_base + the monitor's pid`` (unique while the pod lives,
   nothing to allocate or leak), no supplementary groups;
4. with ``[vm] files = "strict"`` one capability, CAP_DAC_OVERRIDE, raised in the ambient
   set so it survives exec: 9p has to read and write the container's root-owned files
   (no CAP_FOWNER: QEMU cannot chmod a host file; no CAP_FSETID, CAP_MKNOD, CAP_CHOWN);
   with ``"faithful"`` (the default) also the file capabilities 9p passthrough needs to
   leave files as runc would (FAITHFUL_CAPS: CAP_CHOWN, CAP_DAC_READ_SEARCH, CAP_FOWNER,
   CAP_FSETID, CAP_MKNOD, CAP_SETFCAP), on exports that are nodev; never CAP_SETUID,
   CAP_SYS_ADMIN or any other: every other capability leaves the bounding set;
5. RLIMIT_NOFILE at NOFILE: 9p closes its least used files as it nears it, so the guest
   cannot make QEMU hold more host files open (CVE-2020-10717 was virtiofsd's version);
6. no_new_privs, and PDEATHSIG set after the uid switch (which resets it), so QEMU still
   dies with the monitor;
7. QEMU then turns on its own seccomp sandbox (``devices.Sandbox``).

QEMU's sockets and console are file descriptors the monitor made (``vm/qemu.py``): nothing in
the state directory is reachable from the jail. A failure is one line on stderr (QEMU's log,
which the monitor quotes) and exit status 125, before QEMU runs.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field

from hyperpy import launcher
from hyperpy.errors import VMError

KERNEL = "/boot/vmlinux"
INITRD = "/boot/initrd.img"
SHARE = "/share"
IMAGE = "/image"
KEEP_CAPS = ("CAP_DAC_OVERRIDE",)
# [vm] files = "faithful": 9p passthrough gives what the guest makes its real owner and mode
# (fchownat, fchmodat after create), makes device nodes and keeps set-id bits and file
# capabilities as a runc container leaves them; the exports are nodev, so no node it makes
# is ever opened on the host
FAITHFUL_CAPS = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER",
                 "CAP_FSETID", "CAP_MKNOD", "CAP_SETFCAP")  # fmt: skip
BOOTSTRAP = launcher.bootstrap("hyperpy.vm.jailer")
BASE_DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom")
NOFILE = 4096  # QEMU's RLIMIT_NOFILE: the guest cannot make it hold more host files open


class JailError(VMError):
    """The jail could not be planned or entered; the message says what and how to fix."""


@dataclass(frozen=True)
class Bind:
    source: str  # host path
    target: str  # path inside the jail
    kind: str = "ro"  # ro | dev (read-only device node) | share (recursive, rw, slave)


@dataclass(frozen=True)
class Jail:
    root: str  # host directory the jail's tmpfs root is mounted on
    uid: int
    gid: int
    parent: int  # the monitor: QEMU gets SIGKILL when it dies
    binary: str  # QEMU's real path on the host (under /usr)
    binds: tuple[Bind, ...] = field(default_factory=tuple)
    caps: tuple[str, ...] = KEEP_CAPS
    nofile: int = NOFILE

    def wrap(self, argv: list[str]) -> list[str]:
        """The command that enters the jail and execs ``argv`` (QEMU's) inside it, under
        ``python -S`` (startup time: :func:`hyperpy.launcher.lean_argv`)."""
        doc = asdict(self)
        doc["binds"] = [asdict(b) for b in self.binds]
        return launcher.lean_argv("hyperpy.vm.jailer", json.dumps(doc), "--", self.binary,
                                  *argv[1:])  # fmt: skip


def plan(
    *,
    root: str,
    uid: int,
    parent: int,
    qemu: str,
    kernel: str,
    initrd: str,
    share: str | None,
    image: str | None = None,
    devices: tuple[str, ...] = (),
    faithful: bool = False,
) -> Jail:
    """The jail of one pod's QEMU. ``devices``: extra device nodes (/dev/kvm, ...);
    ``faithful``: QEMU keeps the capabilities 9p passthrough needs (FAITHFUL_CAPS)."""
    found = shutil.which(qemu)
    if found is None:
        raise JailError(f"QEMU binary {qemu!r} not found: install qemu-system-x86 or set [vm] qemu")
    binary = os.path.realpath(found)
    if not binary.startswith("/usr/"):
        raise JailError(
            f"QEMU binary {binary} is outside /usr, the only program tree the jail holds: "
            "install it under /usr or set [jail] enabled = false"
        )
    binds = [Bind("/usr", "/usr"), Bind(kernel, KERNEL), Bind(initrd, INITRD)]
    binds += [Bind(d, d, "dev") for d in (*BASE_DEVICES, *devices)]
    if share:
        binds.append(Bind(share, SHARE, "share"))
    if image:
        binds.append(Bind(image, IMAGE, "share"))
    caps = FAITHFUL_CAPS if faithful else KEEP_CAPS
    return Jail(root=root, uid=uid, gid=uid, parent=parent, binary=binary, binds=tuple(binds),
                caps=caps)  # fmt: skip
