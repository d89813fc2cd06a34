"""The OCI lifecycle driven with exactly the command lines containerd's runc shim uses.

The test process makes itself a child subreaper, as the shim does, so the process proxy
whose pid --pid-file names is re-parented to it and its exit status can be waited for.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import subprocess
import threading
import time

import pytest

from tests.conftest import HYPERPY, hyperpy, needs_artifacts

# on both hypervisor drivers (tests/vm/conftest.py)
pytestmark = [pytest.mark.vm, needs_artifacts, pytest.mark.usefixtures("driver")]
PR_SET_CHILD_SUBREAPER = 36


@pytest.fixture(autouse=True)
def subreaper():
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1)
    yield
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 0)
    while True:  # reap the monitors and proxies that were re-parented to us
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break


class Pipes:
    """The stdio a shim hands to `create`: three pipes; we keep the other ends."""

    def __init__(self) -> None:
        self.in_r, self.in_w = os.pipe()
        self.out_r, self.out_w = os.pipe()
        self.err_r, self.err_w = os.pipe()

    def child_ends(self) -> dict:
        return {"stdin": self.in_r, "stdout": self.out_w, "stderr": self.err_w}

    def close_child_ends(self) -> None:
        for fd in (self.in_r, self.out_w, self.err_w):
            os.close(fd)


def read_all(fd: int, timeout: float = 60) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    os.set_blocking(fd, False)
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            time.sleep(0.02)
            continue
        if not chunk:
            return out
        out += chunk
    raise AssertionError(f"no EOF within {timeout}s; got {out!r}")


def create(root, bundle, cid, pipes=None, extra=(), tmp=None):
    pid_file = os.path.join(tmp or bundle, f"{cid}.pid")
    null = subprocess.DEVNULL
    kw = pipes.child_ends() if pipes else {"stdin": null, "stdout": null, "stderr": null}
    res = subprocess.run(
        [
            HYPERPY,
            "--root",
            root,
            "--log",
            os.path.join(bundle, "log.json"),
            "--log-format",
            "json",
            "create",
            "--bundle",
            bundle,
            "--pid-file",
            pid_file,
            *extra,
            cid,
        ],
        timeout=180,
        **kw,
    )
    assert res.returncode == 0, open(os.path.join(bundle, "log.json")).read()
    with open(pid_file) as f:
        return int(f.read())


def status_of(root, cid):
    res = hyperpy(root, "state", cid, check=True)
    return json.loads(res.stdout)


def wait_exit(pid, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            return code
        time.sleep(0.05)
    raise AssertionError(f"proxy {pid} did not exit within {timeout}s")


def test_create_start_state_exit_delete(root, bundle):
    b = bundle(["sh", "-c", "read line; echo got:$line; exit 7"])
    pipes = Pipes()
    pid = create(root, b, "life1", pipes)
    pipes.close_child_ends()
    st = status_of(root, "life1")
    assert st["status"] == "created" and st["pid"] == pid and st["bundle"] == b
    hyperpy(root, "start", "life1", check=True)
    assert status_of(root, "life1")["status"] == "running"
    os.write(pipes.in_w, b"hello\n")
    os.close(pipes.in_w)
    assert read_all(pipes.out_r) == b"got:hello\n"
    assert wait_exit(pid) == 7
    assert status_of(root, "life1")["status"] == "stopped"
    hyperpy(root, "delete", "life1", check=True)
    assert hyperpy(root, "state", "life1").returncode == 4


@pytest.mark.parametrize("sig", ["KILL", "SIGKILL", "9"])
def test_kill_by_name_and_number(root, bundle, sig):
    b = bundle(["sleep", "1000"])
    pid = create(root, b, "kill1")
    hyperpy(root, "start", "kill1", check=True)
    hyperpy(root, "kill", "kill1", sig, check=True)
    assert wait_exit(pid) == 128 + 9
    hyperpy(root, "delete", "kill1", check=True)


def test_kill_all_and_delete_force_rules(root, bundle):
    b = bundle(["sh", "-c", "sleep 1000 & sleep 1000 & wait"])
    pid = create(root, b, "all1")
    hyperpy(root, "start", "all1", check=True)
    res = hyperpy(root, "delete", "all1")
    assert res.returncode == 6 and b"running" in res.stderr
    # As with runc: the container's init (sh, pid 1 of its namespace, no TERM handler) does not
    # take the TERM, its children do; its `wait` returns and it exits 0. A plain `kill TERM`
    # would leave everything running, so exiting at all shows --all reached the children.
    # start returns once the process passed its gate, as runc's: wait for the children.
    deadline = time.monotonic() + 60
    while hyperpy(root, "ps", "all1").stdout.count(b"sleep 1000") < 2:
        assert time.monotonic() < deadline, "the container's children never appeared"
        time.sleep(0.1)
    hyperpy(root, "kill", "--all", "all1", "TERM", check=True)
    assert wait_exit(pid) == 0
    hyperpy(root, "delete", "all1", check=True)


def test_delete_force_running(root, bundle):
    pid = create(root, bundle(["sleep", "1000"]), "force1")
    hyperpy(root, "start", "force1", check=True)
    hyperpy(root, "delete", "--force", "force1", check=True)
    assert wait_exit(pid) != 0


def test_exec_detach_with_pid_file_and_status(root, bundle, tmp_path):
    b = bundle(["sleep", "1000"])
    create(root, b, "exec1")
    hyperpy(root, "start", "exec1", check=True)
    proc = tmp_path / "process.json"
    proc.write_text(
        json.dumps(
            {
                "args": ["sh", "-c", "echo in-exec; exit 5"],
                "cwd": "/",
                "env": ["PATH=/bin"],
                "user": {"uid": 0, "gid": 0},
            }
        )
    )
    pipes = Pipes()
    pid_file = tmp_path / "exec.pid"
    res = subprocess.run(
        [
            HYPERPY,
            "--root",
            root,
            "exec",
            "--process",
            str(proc),
            "--detach",
            "--pid-file",
            str(pid_file),
            "exec1",
        ],
        timeout=120,
        **pipes.child_ends(),
    )
    pipes.close_child_ends()
    assert res.returncode == 0
    assert read_all(pipes.out_r) == b"in-exec\n"
    assert wait_exit(int(pid_file.read_text())) == 5
    # the argv form, in the foreground
    res = hyperpy(root, "exec", "exec1", "sh", "-c", "exit 3")
    assert res.returncode == 3
    hyperpy(root, "delete", "--force", "exec1", check=True)


def test_console_socket_receives_one_tty_fd(root, bundle, tmp_path):
    # the window size set on the master before start reaches the guest's pty
    b = bundle(["sh", "-c", "tty; test -c /dev/console && echo console-ok; sleep 1; stty size; "
                "echo done"], terminal=True)  # fmt: skip
    sock_path = str(tmp_path / "console.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(1)
    received = {}

    def accept():
        conn, _ = srv.accept()
        msg, anc, _, _ = conn.recvmsg(4096, socket.CMSG_SPACE(4 * 4))
        fds = []
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += list(memoryview(data).cast("i"))
        received["fds"] = fds
        conn.close()

    t = threading.Thread(target=accept)
    t.start()
    pid = create(root, b, "tty1", extra=["--console-socket", sock_path])
    t.join(30)
    fds = received["fds"]
    assert len(fds) == 1 and os.isatty(fds[0])
    import fcntl
    import struct
    import termios

    fcntl.ioctl(fds[0], termios.TIOCSWINSZ, struct.pack("HHHH", 41, 101, 0, 0))
    hyperpy(root, "start", "tty1", check=True)
    out = b""
    deadline = time.monotonic() + 60
    os.set_blocking(fds[0], False)
    while b"done" not in out and time.monotonic() < deadline:
        try:
            out += os.read(fds[0], 4096)
        except BlockingIOError:
            time.sleep(0.05)
        except OSError:
            break
    assert b"/dev/pts/" in out and b"done" in out, out
    assert b"41 101" in out and b"console-ok" in out, out
    assert wait_exit(pid) == 0
    os.close(fds[0])
    hyperpy(root, "delete", "tty1", check=True)


def test_pipes_given_to_commands_reach_eof_when_they_exit(root, bundle):
    """The shim blocks until every process it started lets go of its pipes."""
    b = bundle(["sleep", "1000"])
    for argv in (
        ["create", "--bundle", b, "eof1"],
        ["start", "eof1"],
        ["kill", "eof1", "KILL"],
        ["delete", "--force", "eof1"],
    ):
        p = subprocess.Popen(
            [HYPERPY, "--root", root, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert p.wait(timeout=180) == 0, p.stderr.read()
        if argv[0] == "create":
            continue  # create's stdio is the container's: the proxy holds it by design
        t0 = time.monotonic()
        p.stdout.read()
        p.stderr.read()
        assert time.monotonic() - t0 < 5, f"{argv[0]}: pipes held after exit"


def test_concurrent_create_has_one_winner(root, bundle):
    b = bundle(["sleep", "1000"])
    procs = [
        subprocess.Popen(
            [HYPERPY, "--root", root, "create", "--bundle", b, "same"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    codes = sorted(p.wait(timeout=180) for p in procs)
    assert codes == [0, 5, 5]
    hyperpy(root, "delete", "--force", "same", check=True)


def test_error_is_a_json_log_line(root, tmp_path):
    log = tmp_path / "log.json"
    res = subprocess.run(
        [HYPERPY, "--root", root, "--log", str(log), "--log-format", "json", "start", "nosuch"],
        capture_output=True,
        timeout=30,
    )
    assert res.returncode == 4
    last = json.loads(log.read_text().splitlines()[-1])
    assert last["level"] == "error" and "nosuch" in last["msg"] and last["time"]


def _cgroup_dirs(rel):
    root = "/sys/fs/cgroup"
    if os.path.exists(f"{root}/cgroup.controllers"):
        return {"v2": f"{root}/{rel}"}
    return {
        c: f"{root}/{c}/{rel}" for c in ("memory", "pids", "cpu") if os.path.isdir(f"{root}/{c}")
    }


def test_pod_lives_in_its_host_cgroup(root, bundle, driver):
    """Proxy, monitor and QEMU in the pod's host cgroup, the guest's memory charged there:
    for libvirt too, whose QEMU the driver moves out of libvirt's machine cgroup."""
    rel = f"hyperpy-test/cg-{os.getpid()}"
    limit = 64 << 20
    b = bundle(
        ["sleep", "1000"],
        linux={
            "cgroupsPath": "/" + rel,
            "namespaces": [{"type": t} for t in ("pid", "mount", "uts", "network")],
            "resources": {"memory": {"limit": limit}},
        },
    )
    pid = create(root, b, "cg1")
    st = json.loads(hyperpy(root, "state", "cg1", check=True).stdout)
    assert st["pid"] == pid
    dirs = _cgroup_dirs(rel)
    mem = dirs.get("memory") or dirs["v2"]
    with open(f"{mem}/cgroup.procs") as f:
        procs = {int(x) for x in f.read().split()}
    assert pid in procs and len(procs) >= 3  # proxy, monitor, QEMU
    raw = json.load(open(os.path.join(root, "cg1", "state.json")))
    for d in dirs.values():  # in every hierarchy
        with open(f"{d}/cgroup.procs") as f:
            assert raw["qemu_pid"] in {int(x) for x in f.read().split()}, d
    limit_file = "memory.max" if "v2" in dirs else "memory.limit_in_bytes"
    with open(f"{mem}/{limit_file}") as f:
        ceiling = int(f.read())
    # the guest enforces the limit; the host ceiling leaves room for the VM around it
    assert ceiling > limit + (128 << 20)
    usage_file = "memory.current" if "v2" in dirs else "memory.usage_in_bytes"
    with open(f"{mem}/{usage_file}") as f:
        assert int(f.read()) > 32 << 20  # the guest's memory is charged to the pod
    hyperpy(root, "delete", "--force", "cg1", check=True)
    for d in dirs.values():
        assert not os.path.exists(d)
        assert not os.path.exists(os.path.dirname(d))  # the parent we made is gone too


def test_update_events_pause_resume(root, bundle, tmp_path):
    script = "while true; do cut -d' ' -f1 /proc/uptime >> /tmp/ticks; sleep 0.1; done"
    b = bundle(["sh", "-c", script])
    spec = json.load(open(f"{b}/config.json"))
    spec["root"]["readonly"] = False
    spec["linux"]["resources"] = {"memory": {"limit": 64 << 20}, "pids": {"limit": 40}}
    json.dump(spec, open(f"{b}/config.json", "w"))
    create(root, b, "upd1")
    hyperpy(root, "start", "upd1", check=True)

    def cgroup_file(name):
        res = hyperpy(root, "exec", "upd1", "cat", f"/sys/fs/cgroup/{name}", check=True)
        return res.stdout.decode().strip()

    assert cgroup_file("memory.max") == str(64 << 20)
    # runc's single-value flags, then a LinuxResources document on stdin (the shim's form)
    hyperpy(root, "update", "--memory", "100m", "--pids-limit", "30", "--cpu-quota", "20000",
            "--cpu-period", "100000", "upd1", check=True)  # fmt: skip
    assert cgroup_file("memory.max") == str(100 << 20)
    assert cgroup_file("pids.max") == "30"
    assert cgroup_file("cpu.max") == "20000 100000"
    doc = json.dumps({"memory": {"limit": 80 << 20}, "cpu": {"shares": 2048}}).encode()
    hyperpy(root, "update", "--resources", "-", "upd1", input=doc, check=True)
    assert cgroup_file("memory.max") == str(80 << 20)
    assert cgroup_file("cpu.weight") == str(1 + ((2048 - 2) * 9999) // 262142)
    bad = hyperpy(root, "update", "--memory", "lots", "upd1")
    assert bad.returncode == 2 and b"--memory" in bad.stderr

    ev = hyperpy(root, "events", "--stats", "upd1", check=True)
    event = json.loads(ev.stdout)
    assert event["type"] == "stats" and event["id"] == "upd1"
    data = event["data"]
    assert data["memory"]["usage"]["usage"] > 0 and data["memory"]["usage"]["limit"] == 80 << 20
    assert data["pids"]["current"] >= 1 and data["cpu"]["usage"]["total"] > 0

    hyperpy(root, "pause", "upd1", check=True)
    assert status_of(root, "upd1")["status"] == "paused"
    # the VM keeps running while the container is frozen: stats still answer
    assert hyperpy(root, "events", "--stats", "upd1").returncode == 0
    time.sleep(1.5)
    hyperpy(root, "resume", "upd1", check=True)
    assert status_of(root, "upd1")["status"] == "running"
    time.sleep(0.5)
    ticks = [float(x) for x in hyperpy(root, "exec", "upd1", "cat", "/tmp/ticks").stdout.split()]
    gaps = [b2 - a for a, b2 in zip(ticks, ticks[1:], strict=False)]
    assert max(gaps) > 1.2, gaps
    hyperpy(root, "delete", "--force", "upd1", check=True)


def test_events_reports_an_oom(root, bundle):
    b = bundle(["sh", "-c", "sleep 1; dd if=/dev/zero of=/dev/null bs=64M count=1; sleep 1000"])
    spec = json.load(open(f"{b}/config.json"))
    spec["linux"]["resources"] = {"memory": {"limit": 24 << 20, "swap": 24 << 20}}
    json.dump(spec, open(f"{b}/config.json", "w"))
    create(root, b, "oom2")
    hyperpy(root, "start", "oom2", check=True)
    p = subprocess.Popen([HYPERPY, "--root", root, "events", "--interval", "200ms", "oom2"],
                         stdout=subprocess.PIPE)  # fmt: skip
    assert p.stdout is not None
    kinds = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "oom" not in kinds:
        kinds.append(json.loads(p.stdout.readline())["type"])
    p.kill()
    p.wait()
    assert "oom" in kinds
    hyperpy(root, "delete", "--force", "oom2", check=True)


def test_hooks_run_on_the_host_with_the_state(root, bundle, tmp_path):
    log = tmp_path / "hooks.log"
    hook = tmp_path / "hook.sh"
    hook.write_text(f'#!/bin/sh\necho "$1 $(cat)" >> {log}\n')
    hook.chmod(0o755)
    b = bundle(["sleep", "1000"])
    spec = json.load(open(f"{b}/config.json"))
    kinds = ["prestart", "createRuntime", "createContainer", "startContainer", "poststart",
             "poststop"]  # fmt: skip
    spec["hooks"] = {k: [{"path": str(hook), "args": ["hook.sh", k]}] for k in kinds}
    json.dump(spec, open(f"{b}/config.json", "w"))
    pid = create(root, b, "hook1")
    hyperpy(root, "start", "hook1", check=True)
    hyperpy(root, "delete", "--force", "hook1", check=True)
    lines = log.read_text().splitlines()
    assert [ln.split()[0] for ln in lines] == kinds
    states = {ln.split()[0]: json.loads(ln.split(" ", 1)[1]) for ln in lines}
    assert states["createRuntime"]["status"] == "creating"
    assert states["startContainer"]["status"] == "created"
    assert states["poststart"]["status"] == "running"
    assert states["poststop"]["status"] == "stopped"
    assert all(s["id"] == "hook1" and s["pid"] == pid and s["bundle"] == b for s in states.values())


def test_failing_create_hook_fails_create_and_leaves_nothing(root, bundle, tmp_path):
    b = bundle(["true"])
    spec = json.load(open(f"{b}/config.json"))
    spec["hooks"] = {"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "exit 3"]}],
                     "prestart": [{"path": "/bin/sleep", "args": ["sleep", "30"],
                                   "timeout": 1}]}  # fmt: skip
    json.dump(spec, open(f"{b}/config.json", "w"))
    res = hyperpy(root, "create", "--bundle", b, "hook2")
    assert res.returncode == 9
    assert b"prestart" in res.stderr and b"timed out" in res.stderr


def test_vm_death_stops_the_container_with_a_reason(root, bundle):
    b = bundle(["sleep", "1000"])
    pid = create(root, b, "dead1")
    hyperpy(root, "start", "dead1", check=True)
    with open(os.path.join(root, "dead1", "state.json")) as f:
        qemu_pid = json.load(f)["qemu_pid"]
    os.kill(qemu_pid, 9)
    assert wait_exit(pid) == 255  # never 0 for a process that did not exit 0
    assert status_of(root, "dead1")["status"] == "stopped"
    with open(os.path.join(root, "dead1", "proxy.log")) as f:
        assert "VM" in f.read()
    hyperpy(root, "delete", "dead1", check=True)
