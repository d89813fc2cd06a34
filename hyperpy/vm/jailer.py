"""Entering QEMU's jail: the wrapper the monitor runs as root in place of QEMU.

Owns the steps of ``vm/jail.py``'s plan, in order, then the exec of QEMU. Run through
``jail.BOOTSTRAP`` (``main(PLAN_JSON -- QEMU_ARGV...)``) on every boot, so it imports only
the standard library's lean modules and the agent's syscall and capability helpers. A
failure is one line on stderr (QEMU's log, which the monitor quotes) and exit status 125,
before QEMU runs.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys

from agent import caps, linux

MERGED_USR = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
EXIT_FAILED = 125


class JailFailed(Exception):
    pass


def _target(root: str, inside: str, is_dir: bool) -> str:
    path = os.path.join(root, inside.lstrip("/"))
    os.makedirs(path if is_dir else os.path.dirname(path), 0o755, exist_ok=True)
    if not is_dir and not os.path.exists(path):
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o444))
    return path


def enter(jail: dict) -> None:
    """Confine the calling process as ``jail`` (a ``vm.jail.Jail`` as JSON) plans."""
    top = caps.last_cap()  # /proc/sys is out of reach once the jail's /proc is in place
    linux.unshare(linux.CLONE_NEWNS | linux.CLONE_NEWNET | linux.CLONE_NEWIPC)
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_SLAVE)
    root = jail["root"]
    os.makedirs(root, 0o700, exist_ok=True)
    linux.mount("tmpfs", root, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC,
                "mode=0755,size=1m,nr_inodes=256")  # fmt: skip
    for b in jail["binds"]:
        if not os.path.exists(b["source"]):
            raise JailFailed(f"{b['source']} does not exist (needed in the jail as {b['target']})")
        target = _target(root, b["target"], os.path.isdir(b["source"]))
        linux.mount(b["source"], target, None, linux.MS_BIND | linux.MS_REC)
        if b["kind"] in ("ro", "dev"):  # read-only down the whole tree (/usr/local too)
            attrs = linux.MOUNT_ATTR_RDONLY | linux.MOUNT_ATTR_NOSUID
            if b["kind"] == "ro":
                attrs |= linux.MOUNT_ATTR_NODEV
            fd = os.open(target, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                linux.mount_setattr(fd, linux.AT_RECURSIVE, attrs)
            finally:
                os.close(fd)
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
    # QEMU's open files are bounded: 9p closes the least used fids as it nears the limit
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = min(jail["nofile"], hard) if hard != resource.RLIM_INFINITY else jail["nofile"]
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    m = caps.masks({s: list(jail["caps"]) for s in caps.SETS})
    caps.before_setuid(m, top, "jail")
    os.setgroups([])
    os.setresgid(jail["gid"], jail["gid"], jail["gid"])
    os.setresuid(jail["uid"], jail["uid"], jail["uid"])
    caps.after_setuid(m, "jail")
    linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != jail["parent"]:
        raise JailFailed("the monitor exited while QEMU was being confined")


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: hyperpy.vm.jailer PLAN_JSON -- QEMU ARGS...\n")
        sys.exit(2)
    try:
        jail = json.loads(argv[0])
        enter(jail)
        os.execv(jail["binary"], argv[2:])
    except Exception as exc:  # noqa: BLE001 - one line in QEMU's log, not a traceback
        sys.stderr.write(f"hyperpy jail: cannot confine or start QEMU: {exc}\n")
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":
    main(sys.argv[1:])
