"""A "remote" hypervisor host for the remote driver's tests: Debian's sshd, started by the
tests on 127.0.0.1 inside a network namespace they create, with keys they generate.

The node's side (hyperpy, containerd) runs in the same namespace (entered with nsenter),
so nothing touches the host's own network. The remote side keeps its files in a work
directory of its own (``Sshd.workdir``), so a test can tell a file on the "remote" host
from one on the node. ``hyperpy_argv`` prefixes a command with the namespace.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

PORT = 2222


class Sshd:
    def __init__(self, base: str) -> None:
        self.base = base
        self.netns = f"hp-ssh-{os.getpid()}"
        self.workdir = os.path.join(base, "remote-work")
        self.key = os.path.join(base, "client_key")
        self.known_hosts = os.path.join(base, "known_hosts")
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Sshd:
        b = self.base
        subprocess.run(["ip", "netns", "add", self.netns], check=True, timeout=10)
        subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], check=True,
                       timeout=10)  # fmt: skip
        for key in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key, "-f",
                            os.path.join(b, key)], check=True, timeout=30)  # fmt: skip
        with open(os.path.join(b, "host_key.pub")) as f:
            kind, blob = f.read().split()[:2]
        with open(self.known_hosts, "w") as f:
            f.write(f"[127.0.0.1]:{PORT} {kind} {blob}\n")
        os.rename(os.path.join(b, "client_key.pub"), os.path.join(b, "authorized_keys"))
        with open(os.path.join(b, "sshd_config"), "w") as f:
            f.write(
                f"Port {PORT}\nListenAddress 127.0.0.1\nHostKey {b}/host_key\n"
                f"AuthorizedKeysFile {b}/authorized_keys\nPidFile {b}/sshd.pid\n"
                "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUsePAM no\n"
                "StrictModes no\nClientAliveInterval 2\nClientAliveCountMax 3\n"
                "MaxSessions 64\nMaxStartups 64\nLogLevel VERBOSE\n"
                "Subsystem sftp internal-sftp\n"
            )
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # its privilege separation dir
        log = open(os.path.join(b, "sshd.log"), "wb")
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.netns}", "/usr/sbin/sshd", "-D", "-e", "-f",
             os.path.join(b, "sshd_config")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 30
        while b"Server listening" not in open(os.path.join(b, "sshd.log"), "rb").read():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"sshd did not start: see {b}/sshd.log")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the listener; sessions end with it
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.kill_sessions()
            self.proc = None
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, timeout=10)

    def sessions(self) -> list[int]:
        """The pids of the sshd processes serving connections (children of the listener)."""
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if self.proc is not None and ppid == self.proc.pid:
                out.append(int(entry))
        return out

    def kill_sessions(self) -> None:
        """Drop every connection, as a network failure would: SIGKILL their sshd processes."""
        for pid in self.sessions():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def config(self, accel: str = "tcg", **remote: object) -> str:
        """A hyperpy config for the remote driver on this host (more [remote] keys given);
        ``accel`` is [vm] accel (auto probes the remote host's KVM)."""
        values = {"host": "127.0.0.1", "port": PORT, "key_file": self.key,
                  "known_hosts": self.known_hosts, "workdir": self.workdir,
                  "watchdog_s": 6.0, **remote}  # fmt: skip
        lines = ["[vm]", 'driver = "remote"', f'accel = "{accel}"', "[remote]"]
        for k, v in values.items():
            lines.append(f"{k} = {v!r}".replace("'", '"'))
        path = os.path.join(self.base, f"remote-{len(os.listdir(self.base))}.toml")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def hyperpy_argv(self, *argv: str) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.netns}", *argv]
