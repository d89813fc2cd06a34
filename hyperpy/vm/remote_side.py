"""What runs on a remote hypervisor host (``[vm] driver = "remote"``): standard library only.

The node copies this file into the remote host's work directory (named by its hash, once)
and runs it over SSH exec channels with the remote host's ``python3``:

``run PODDIR WATCHDOG_S -- QEMU_ARGV...``
    makes PODDIR (``image/``, ``shared/``) and holds a flock on it while it lives, removes
    the pod directories beside it that no live run holds (left by a run that was killed
    with SIGKILL or by a reboot), starts QEMU (dying with this process: PDEATHSIG), relays
    QEMU's serial console (its
    stdout) to this process's stdout and QEMU's stderr to its stderr, and reads the node's
    control lines on stdin: ``ping`` (the node is there), ``stop`` (stop QEMU now). If
    stdin ends (the SSH connection closed) or no ``ping`` came for WATCHDOG_S seconds (the
    connection is silently gone), it stops QEMU: a VM never outlives its node's connection
    by more than that. Once QEMU is gone it removes PODDIR, all of it (the pod's files on
    this host), and exits with QEMU's status (128+N if killed by signal N).
``relay SOCKET``
    the agent channel: connects to QEMU's unix socket (waiting for it to appear) and copies
    bytes both ways between it and stdin/stdout until either side ends.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

STOP_GRACE = 3.0


def _die_with_parent() -> None:
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _copy(read, write) -> None:  # noqa: ANN001 - file-like pairs of either kind
    try:
        while True:
            data = read(65536)
            if not data:
                break
            write(data)
    except OSError:
        pass


def _sweep(poddir: str) -> None:
    """Remove the pod directories beside ``poddir`` that no live run holds."""
    parent = os.path.dirname(poddir)
    for name in os.listdir(parent):
        path = os.path.join(parent, name)
        if path == poddir:
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass  # a live run holds it
        finally:
            os.close(fd)


def run(poddir: str, watchdog: float, argv: list[str]) -> int:
    out = sys.stdout.buffer
    os.makedirs(os.path.dirname(poddir), mode=0o700, exist_ok=True)
    os.mkdir(poddir, 0o700)
    lock = os.open(poddir, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(lock, fcntl.LOCK_EX)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    qemu = None
    try:
        for sub in ("image", "shared"):
            os.mkdir(os.path.join(poddir, sub), 0o755)
        _sweep(poddir)
        qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                preexec_fn=_die_with_parent)  # fmt: skip
        return _serve(qemu, out, stop, watchdog)
    except OSError as exc:
        _say(f"hyperpy-remote: {exc}\n")
        return 127
    finally:  # whatever happened (the node's pipes gone, a signal), no VM or file stays
        if qemu is not None and qemu.poll() is None:
            qemu.kill()
            qemu.wait()
        shutil.rmtree(poddir, ignore_errors=True)
        os.close(lock)


def _serve(qemu: subprocess.Popen, out, stop: threading.Event, watchdog: float) -> int:  # noqa: ANN001
    assert qemu.stdout is not None

    closed = threading.Event()  # QEMU closed its console: it is exiting on its own

    def console() -> None:
        def write(data: bytes) -> None:
            out.write(data)
            out.flush()

        _copy(qemu.stdout.read1, write)  # type: ignore[union-attr]
        closed.set()

    last = [time.monotonic()]

    def control() -> None:
        for line in sys.stdin.buffer:
            word = line.strip()
            if word == b"ping":
                last[0] = time.monotonic()
            elif word == b"stop":
                break
        stop.set()  # "stop", or stdin ended: the node's connection is gone

    relay = threading.Thread(target=console, daemon=True)
    relay.start()
    threading.Thread(target=control, daemon=True).start()
    _watch(qemu, stop, closed, last, watchdog)
    rc = qemu.wait()
    relay.join(STOP_GRACE)  # the console's last lines (a panic) reach the node before the status
    return 128 - rc if rc < 0 else rc


def _watch(qemu: subprocess.Popen, stop: threading.Event, closed: threading.Event,
           last: list[float], watchdog: float) -> None:  # fmt: skip
    """Until QEMU exits; stop it when the node says so, leaves, or falls silent.

    A QEMU that exits by itself keeps its own status, even when the node's ``stop`` or the
    end of its stdin comes at the same moment: it is checked first, and one that has closed
    its console (it is on its way out) gets STOP_GRACE to finish before it is signalled.
    """
    while qemu.poll() is None:
        why = ""
        if stop.is_set() and closed.is_set():
            try:
                qemu.wait(STOP_GRACE)
                return
            except subprocess.TimeoutExpired:
                why = "the node stopped it, or its connection closed"
        elif stop.is_set():
            why = "the node stopped it, or its connection closed"
        elif time.monotonic() - last[0] > watchdog:
            why = f"no word from the node for {watchdog:.0f}s"
        if why:
            _say(f"hyperpy-remote: {why}: stopping QEMU\n")
            qemu.terminate()
            try:
                qemu.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                qemu.kill()
            return
        time.sleep(0.2)


def _say(text: str) -> None:
    """To stderr (the node's qemu.log), unless the node's end of it is gone."""
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except OSError:
        pass


def relay(path: str, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.connect(path)
            break
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                _say(f"hyperpy-remote: {path} did not appear within {timeout}s\n")
                return 1
            time.sleep(0.05)
    stdout = sys.stdout.buffer

    def down() -> None:
        def write(data: bytes) -> None:
            stdout.write(data)
            stdout.flush()

        _copy(sock.recv, write)
        os._exit(0)  # QEMU closed the channel

    threading.Thread(target=down, daemon=True).start()
    _copy(sys.stdin.buffer.read1, sock.sendall)  # type: ignore[union-attr]
    return 0  # the node closed the channel


def main(argv: list[str]) -> int:
    if argv[:1] == ["run"] and len(argv) > 4 and argv[3] == "--":
        return run(argv[1], float(argv[2]), argv[4:])
    if argv[:1] == ["relay"] and len(argv) == 2:
        return relay(argv[1])
    sys.stderr.write("usage: remote_side.py run PODDIR WATCHDOG -- QEMU... | relay SOCKET\n")
    return 2


if __name__ == "__main__":
    code = main(sys.argv[1:])
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            pass
    os._exit(code)  # not sys.exit: a daemon thread still blocked on stdin would abort it
