"""libvirtd for the tests: the machine's, if one answers; else one the tests start and stop.

CI has no systemd, so the tests start Debian's ``virtlogd`` and ``libvirtd`` themselves:

- under ``tini -s -g`` (a subreaper): libvirt's QEMUs daemonize, and this machine's PID 1
  does not reap orphans, so without one they would stay zombies and libvirt would wait on
  them;
- in a network namespace of their own (libvirt's network driver must not touch the host's
  interfaces or firewall);
- in a mount namespace of their own, a slave of the host's (hyperpy's views under
  ``/run/hyperpy/libvirt``, a shared mount made first, still reach it), whose ``/dev`` is a
  small tmpfs without ``kvm``: this machine's /dev/kvm is root-only and cannot run guests,
  and libvirt, finding it enabled when it probed QEMU but not usable by its QEMU user,
  would probe QEMU again on every call (11 s per domain). Hosts with a working
  /dev/kvm (group kvm) need none of this.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

from hyperpy.vm import view

SOCKET = "/run/libvirt/libvirt-sock"
URI = "qemu:///system"
DEVFS = """
set -e
mount -t tmpfs -o mode=755,nosuid,size=64k hyperpy-test-dev /dev
cd /dev
mknod -m 666 null c 1 3; mknod -m 666 zero c 1 5; mknod -m 666 full c 1 7
mknod -m 666 random c 1 8; mknod -m 666 urandom c 1 9; mknod -m 666 tty c 5 0
mkdir -m 755 net pts shm mqueue; mknod -m 666 net/tun c 10 200
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts /dev/pts; ln -s pts/ptmx ptmx
mount -t tmpfs -o mode=1777,nosuid,nodev shm /dev/shm
mount -t mqueue mqueue /dev/mqueue
ln -s /proc/self/fd fd; ln -s fd/0 stdin; ln -s fd/1 stdout; ln -s fd/2 stderr
virtlogd &
exec libvirtd
"""


def answers() -> bool:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(SOCKET)
        return True
    except OSError:
        return False
    finally:
        s.close()


class Daemon:
    """``with Daemon(logdir):`` a libvirtd is reachable at URI; stopped after if started."""

    def __init__(self, logdir: str) -> None:
        self.logdir = logdir
        self.proc: subprocess.Popen | None = None
        self.netns = f"hyperpy-libvirtd-{os.getpid()}"

    def __enter__(self) -> Daemon:
        if answers():
            return self
        view.ensure_root()
        subprocess.run(["ip", "netns", "add", self.netns], check=True, timeout=10)
        self._start()
        return self

    @property
    def ours(self) -> bool:
        """Whether the tests started it (and may stop and restart it)."""
        return self.proc is not None

    def stop(self) -> None:
        """Stop our libvirtd and virtlogd (domains keep running, as with a restart)."""
        assert self.proc is not None
        self._signal_group()
        self.proc = None

    def start(self) -> None:
        """Start our libvirtd again after :meth:`stop`."""
        self._start()

    def _start(self) -> None:
        log = open(os.path.join(self.logdir, "libvirtd.log"), "ab")
        env = dict(os.environ, LIBVIRT_LOG_OUTPUTS=f"3:file:{self.logdir}/libvirtd-debug.log")
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.netns}", "unshare", "-m",
             "--propagation", "slave", "tini", "-s", "-g", "--", "sh", "-c", DEVFS],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, env=env,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 60
        while not answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"libvirtd did not start: see {self.logdir}/libvirtd.log")
            time.sleep(0.1)
        # the first call probes QEMU's capabilities (seconds): not inside a test's timing
        subprocess.run(["virsh", "-c", URI, "capabilities"], capture_output=True, timeout=120)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self._signal_group()
            self.proc = None
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, timeout=10)

    def _signal_group(self) -> None:
        """SIGTERM tini's process group (libvirtd, virtlogd), then SIGKILL what is left;
        the domains' QEMUs have sessions of their own and keep running."""
        assert self.proc is not None
        group = -self.proc.pid
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.kill(group, sig)
                self.proc.wait(wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        try:
            os.kill(group, signal.SIGKILL)  # virtlogd, anything tini left
        except ProcessLookupError:
            pass


def domains(suffix: str = "") -> list[str]:
    """Names of hyperpy's libvirt domains (ending with ``suffix``), running or defined."""
    if not answers():
        return []
    res = subprocess.run(
        ["virsh", "-c", URI, "list", "--all", "--name"], capture_output=True, text=True, timeout=30
    )
    return [n for n in res.stdout.split() if n.startswith("hyperpy-") and n.endswith(suffix)]
