"""The remote driver's pure parts and its remote side, run here with a stand-in for QEMU: the
argv QEMU gets there, which binds can cross, and the watchdog that stops a VM whose node
went silent (real processes, no VM)."""

import os
import subprocess
import sys
import threading
import time

import pytest

from agent.protocol import IMAGE_TAG
from hyperpy.config import ConfigError, VMConfig, from_dict
from hyperpy.errors import SpecError
from hyperpy.share import Bind
from hyperpy.vm.plan import Placeholder, build_spec
from hyperpy.vm.remote import SIDE, RemoteVM, remote_argv

POD = "/var/lib/hyperpy-remote/pods/0123abcd-0123456789ab-a1b2c3"


def test_qemu_there_gets_remote_paths_a_console_on_stdout_and_no_fds():
    spec = build_spec(VMConfig(kernel="/k", initrd="/i"), "tcg", Placeholder(),
                      share="/node/shared", image="/node/image")  # fmt: skip
    argv = remote_argv(spec, POD, "/cache/aaa", "/cache/bbb")
    assert argv[argv.index("-kernel") + 1] == "/cache/aaa"
    assert argv[argv.index("-initrd") + 1] == "/cache/bbb"
    assert argv[argv.index("-serial") + 1] == "stdio"
    assert not [a for a in argv if "fd=" in a or "/dev/fdset" in a or "/node/" in a], argv
    assert f"socket,id=agentch,path={POD}/agent.sock,server=on,wait=off" in argv
    fsdevs = [a for a in argv if a.startswith("local,")]
    assert any(f"path={POD}/shared," in a for a in fsdevs)
    assert any(f"path={POD}/image," in a and "readonly=on" in a for a in fsdevs)
    assert f"socket,id=qmp,path={POD}/qmp.sock,server=on,wait=off" in argv  # tunnelled
    assert any(IMAGE_TAG in a for a in argv)


def test_only_what_can_be_copied_crosses():
    vm = RemoteVM.__new__(RemoteVM)
    ro = Bind("/a", "c/mounts/3/a", True, readonly=True)
    hosts = Bind("/var/lib/docker/containers/x/hosts", "c/mounts/4/hosts", False)
    assert vm.check_binds([ro]) == [ro]
    (copied,) = vm.check_binds([hosts])
    assert copied.export == hosts.export  # docker's: a copy, on the guest's writable side
    with pytest.raises(SpecError, match="read-write bind mount of /srv/app.conf"):
        vm.check_binds([Bind("/srv/app.conf", "c/mounts/6/app.conf", False)])
    with pytest.raises(SpecError) as err:
        vm.check_binds([Bind("/data", "c/mounts/5/data", True)])
    assert err.value.pointer == "/mounts/5/source" and "read-only" in str(err.value)


def test_remote_config_is_checked():
    cfg = from_dict({"vm": {"driver": "remote"}, "remote": {"host": "h", "port": 2222}})
    assert cfg.vm.driver == "remote" and cfg.remote.port == 2222
    with pytest.raises(ConfigError, match="port must be int"):
        from_dict({"remote": {"port": "22"}})
    with pytest.raises(ConfigError, match="vsock"):
        from_dict({"vm": {"driver": "remote", "channel": "vsock"}})
    with pytest.raises(ConfigError, match="watchdog_s must be at least 6"):
        from_dict({"remote": {"watchdog_s": 2.0}})
    with pytest.raises(ConfigError, match="workdir"):
        from_dict({"remote": {"workdir": "/srv/a,b"}})


def side(tmp_path, watchdog: float, script: str) -> subprocess.Popen:
    pod = tmp_path / "pods" / "pod"  # the remote side makes it
    argv = [sys.executable, SIDE, "run", str(pod), str(watchdog), "--", "sh", "-c",
            f"test -d {pod}/image && test -d {pod}/shared && {script}"]  # fmt: skip
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip


def until_exit(p: subprocess.Popen, timeout: float = 30) -> tuple[int, bytes, bytes]:
    """Its status, stdout and stderr, with its stdin held open until it has exited: a closed
    stdin is the node's connection gone, which stops QEMU (communicate() closes it first)."""
    assert p.stdin is not None and p.stdout is not None and p.stderr is not None
    timer = threading.Timer(timeout, p.kill)
    timer.start()
    try:
        out = p.stdout.read()
        rc = p.wait()
        err = p.stderr.read()
    finally:
        timer.cancel()
        p.stdin.close()
    return rc, out, err


def test_the_remote_side_relays_the_console_and_exits_as_qemu(tmp_path):
    p = side(tmp_path, 30, "echo console-line; exit 3")
    rc, out, err = until_exit(p)
    assert rc == 3 and out == b"console-line\n", err
    assert os.listdir(tmp_path / "pods") == []  # the pod's files go with the VM


@pytest.mark.parametrize("exiting", [True, False])
def test_a_qemu_exiting_by_itself_keeps_its_status_when_the_node_leaves_at_once(exiting):
    from hyperpy.vm import remote_side

    # one that closed its console is on its way out: the node's stop does not signal it
    script = "exec >&-; sleep 0.5; exit 3" if exiting else "exec sleep 1000"
    qemu = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE)
    stop, closed = threading.Event(), threading.Event()
    stop.set()
    if exiting:
        closed.set()
    try:
        remote_side._watch(qemu, stop, closed, [time.monotonic()], 30)
        assert qemu.wait(5) == (3 if exiting else -15)
    finally:
        qemu.kill()
        qemu.wait()
        qemu.stdout.close()


def test_the_remote_side_sweeps_what_a_killed_run_left_and_nothing_live(tmp_path):
    import fcntl

    pods = tmp_path / "pods"
    (pods / "stale").mkdir(parents=True)  # a run killed with SIGKILL left it
    (pods / "stale" / "image").mkdir()
    live = pods / "live"
    live.mkdir()
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a live run holds its own
    try:
        p = side(tmp_path, 30, "exit 0")
        assert p.wait(timeout=30) == 0
        assert sorted(os.listdir(pods)) == ["live"]
    finally:
        os.close(fd)


def test_a_qemu_that_cannot_start_leaves_nothing(tmp_path):
    pod = tmp_path / "pods" / "pod"
    p = subprocess.run([sys.executable, SIDE, "run", str(pod), "30", "--", "/no/such/qemu"],
                       capture_output=True, timeout=30, input=b"")  # fmt: skip
    assert p.returncode == 127 and b"/no/such/qemu" in p.stderr
    assert os.listdir(tmp_path / "pods") == []


def test_the_remote_side_stops_qemu_when_the_node_falls_silent(tmp_path):
    p = side(tmp_path, 1.5, "exec sleep 1000")
    assert p.stdin is not None
    start = time.monotonic()
    for _ in range(5):  # pings keep it alive past the watchdog
        p.stdin.write(b"ping\n")
        p.stdin.flush()
        time.sleep(0.5)
    assert p.poll() is None
    # then silence, the stdin still open: a connection gone without a word
    assert p.wait(timeout=15) == 128 + 15  # SIGTERM
    assert time.monotonic() - start < 10
    assert b"no word from the node" in p.stderr.read()
    assert os.listdir(tmp_path / "pods") == []


def test_the_remote_side_stops_qemu_when_the_connection_closes(tmp_path):
    p = side(tmp_path, 60, "exec sleep 1000")
    assert p.stdin is not None
    p.stdin.close()  # sshd closes the command's stdin when the connection goes
    assert p.wait(timeout=15) == 128 + 15
    assert os.listdir(tmp_path / "pods") == []


def test_the_relay_waits_for_the_socket_and_copies_both_ways(tmp_path):
    import socket

    path = str(tmp_path / "agent.sock")
    p = subprocess.Popen([sys.executable, SIDE, "relay", path], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE)  # fmt: skip
    time.sleep(0.3)  # it waits: QEMU has not made the socket yet
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)
    srv.settimeout(15)
    conn, _ = srv.accept()
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write(b"to the agent")
    p.stdin.flush()
    assert conn.recv(100) == b"to the agent"
    conn.sendall(b"from the agent")
    assert os.read(p.stdout.fileno(), 100) == b"from the agent"
    conn.close()  # QEMU went away: the relay ends
    assert p.wait(timeout=15) == 0
    srv.close()
