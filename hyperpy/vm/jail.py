"""QEMU's confinement, after Firecracker's jailer: what QEMU may reach, and entering it.

Owns the plan of a pod's jail (pure: :func:`plan`, :meth:`Jail.wrap`) and entering it, as
``python -m hyperpy.vm.jail PLAN_JSON -- QEMU_ARGV...``: the monitor runs this as root in
place of QEMU, and it execs QEMU once confined:

1. a mount namespace of its own; host mounts still propagate in (a pod member's rootfs
   bound into the share after boot reaches QEMU), nothing propagates out;
2. its root: a tmpfs on ``R/ID/jail`` with only ``/usr`` (read-only: the binary, its
   libraries and firmware) and the merged-/usr links, the kernel and initrd (read-only),
   the two 9p exports at ``/share`` and ``/image``, ``/dev/null``, ``/dev/zero``,
   ``/dev/urandom`` (and ``/dev/kvm`` or ``/dev/vhost-vsock`` when used), and a ``/proc``
   that shows only its own processes (``hidepid=invisible,subset=pid``); pivot_root into
   it, the old root detached, the root read-only;
3. a uid and gid of its own, ``uid_base + the monitor's pid`` (unique while the pod lives,
   nothing to allocate or leak), no supplementary groups;
4. one capability, CAP_DAC_OVERRIDE, raised in the ambient set so it survives exec: 9p has
   to read and write the container's root-owned files; every other capability leaves the
   bounding set (no CAP_FOWNER: QEMU cannot chmod a host file; no CAP_FSETID, CAP_MKNOD,
   CAP_CHOWN, CAP_SETUID, CAP_SYS_ADMIN);
5. no_new_privs, and PDEATHSIG set after the uid switch (which resets it), so QEMU still
   dies with the monitor;
6. QEMU then turns on its own seccomp sandbox (``devices.Sandbox``).

QEMU's sockets and console are file descriptors the monitor made (``vm/qemu.py``): nothing in
the state directory is reachable from the jail. A failure is one line on stderr (QEMU's log,
which the monitor quotes) and exit status 125, before QEMU runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from dataclasses import asdict, dataclass, field

from hyperpy.errors import VMError

KERNEL = "/boot/vmlinux"
INITRD = "/boot/initrd.img"
SHARE = "/share"
IMAGE = "/image"
KEEP_CAPS = ("CAP_DAC_OVERRIDE",)
BASE_DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom")
MERGED_USR = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
EXIT_FAILED = 125


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

    def wrap(self, argv: list[str]) -> list[str]:
        """The command that enters the jail and execs ``argv`` (QEMU's) inside it."""
        doc = asdict(self)
        doc["binds"] = [asdict(b) for b in self.binds]
        return [sys.executable, "-m", "hyperpy.vm.jail", json.dumps(doc), "--", self.binary,
                *argv[1:]]  # fmt: skip

    @classmethod
    def from_json(cls, text: str) -> Jail:
        doc = json.loads(text)
        doc["binds"] = tuple(Bind(**b) for b in doc["binds"])
        doc["caps"] = tuple(doc["caps"])
        return cls(**doc)


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
) -> Jail:
    """The jail of one pod's QEMU. ``devices``: extra device nodes (/dev/kvm, ...)."""
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
    return Jail(root=root, uid=uid, gid=uid, parent=parent, binary=binary, binds=tuple(binds))


# --- entering it (the wrapper process, as root) ---------------------------------------------
def _target(root: str, inside: str, is_dir: bool) -> str:
    path = os.path.join(root, inside.lstrip("/"))
    os.makedirs(path if is_dir else os.path.dirname(path), 0o755, exist_ok=True)
    if not is_dir and not os.path.exists(path):
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o444))
    return path


def enter(jail: Jail) -> None:
    """Confine the calling process as planned (see the module docstring); then exec QEMU."""
    from agent import caps, linux

    top = caps.last_cap()  # /proc/sys is out of reach once the jail's /proc is in place
    linux.unshare(linux.CLONE_NEWNS)
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_SLAVE)
    root = jail.root
    os.makedirs(root, 0o700, exist_ok=True)
    linux.mount("tmpfs", root, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC,
                "mode=0755,size=1m,nr_inodes=256")  # fmt: skip
    for b in jail.binds:
        if not os.path.exists(b.source):
            raise JailError(f"{b.source} does not exist (needed in the jail as {b.target})")
        target = _target(root, b.target, os.path.isdir(b.source))
        linux.mount(b.source, target, None, linux.MS_BIND | linux.MS_REC)
        if b.kind in ("ro", "dev"):
            flags = linux.MS_REMOUNT | linux.MS_BIND | linux.MS_RDONLY | linux.MS_NOSUID
            linux.mount(None, target, None, flags | (0 if b.kind == "dev" else linux.MS_NODEV))
    for name in MERGED_USR:
        host = os.path.join("/", name)
        if os.path.islink(host):
            os.symlink(os.readlink(host), os.path.join(root, name))
    proc = _target(root, "/proc", True)
    linux.mount("proc", proc, "proc", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC,
                "hidepid=invisible,subset=pid")  # fmt: skip
    os.chdir(root)
    linux.pivot_root(".", ".")
    linux.umount2(".", linux.MNT_DETACH)
    os.chdir("/")
    linux.mount(None, "/", None, linux.MS_REMOUNT | linux.MS_BIND | linux.MS_RDONLY
                | linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC)  # fmt: skip

    m = caps.masks({s: list(jail.caps) for s in caps.SETS}, "jail")
    caps.before_setuid(m, top, "jail")
    os.setgroups([])
    os.setresgid(jail.gid, jail.gid, jail.gid)
    os.setresuid(jail.uid, jail.uid, jail.uid)
    caps.after_setuid(m, "jail")
    linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != jail.parent:
        raise JailError("the monitor exited while QEMU was being confined")


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: python -m hyperpy.vm.jail PLAN_JSON -- QEMU ARGS...\n")
        sys.exit(2)
    try:
        jail = Jail.from_json(argv[0])
        enter(jail)
    except Exception as exc:  # noqa: BLE001 - one line in QEMU's log, not a traceback
        sys.stderr.write(f"hyperpy jail: cannot confine QEMU: {exc}\n")
        sys.exit(EXIT_FAILED)
    os.execv(jail.binary, argv[2:])


if __name__ == "__main__":
    main(sys.argv[1:])
