"""The host trusts nothing from the guest: tried as an attacker with root in the guest would.

QEMU runs confined (its /proc status and root read from the host) with only the capabilities
its ``[vm] files`` mode needs; with ``files = "strict"`` the 9p share keeps the guest's
owners, modes and special files out of the host's metadata; in either mode a privileged
container cannot plant links where the host later mounts, and monitor.sock's peers cannot
grow the monitor or crash it. (What ``"faithful"`` leaves on the host: tests/vm/test_files.py.)
"""

from __future__ import annotations

import json
import os
import socket
import stat
import time

import pytest

from agent import protocol as P
from agent.tables import CAPS
from hyperpy.sandbox.store import mounts_below
from hyperpy.vm import jail as J
from tests.conftest import hyperpy, needs_artifacts
from tests.vm.test_lifecycle import create, status_of, subreaper  # noqa: F401 - fixture

pytestmark = [pytest.mark.vm, needs_artifacts]
ALL_CAPS = sorted(CAPS)
MODES = pytest.mark.parametrize("files_mode", ["faithful", "strict"], indirect=True)


def edit_spec(bundle_dir, edit):
    path = os.path.join(bundle_dir, "config.json")
    with open(path) as f:
        spec = json.load(f)
    edit(spec)
    with open(path, "w") as f:
        json.dump(spec, f)


def privileged(spec, pid_namespace=True):
    """All capabilities, every device allowed: root in the guest, as an attacker has it."""
    spec["process"]["capabilities"] = {s: ALL_CAPS for s in
                                       ("bounding", "effective", "permitted")}  # fmt: skip
    spec["linux"].setdefault("resources", {})["devices"] = [{"allow": True, "access": "rwm"}]
    if not pid_namespace:
        spec["linux"]["namespaces"] = [
            ns for ns in spec["linux"]["namespaces"] if ns["type"] != "pid"
        ]


def proc_status(pid):
    with open(f"/proc/{pid}/status") as f:
        return dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)


@MODES
def test_qemu_runs_unprivileged_seccomp_confined_in_its_own_root(root, bundle, files_mode):
    create(root, bundle(["sleep", "1000"]), "jailed")
    with open(f"{root}/jailed/state.json") as f:
        pid = json.load(f)["qemu_pid"]
    st = {k: v.strip() for k, v in proc_status(pid).items()}
    uids, gids = st["Uid"].split(), st["Gid"].split()
    assert len(set(uids)) == 1 and int(uids[0]) >= 2_000_000_000, st["Uid"]
    assert gids == uids and st["Groups"] == ""
    assert st["Seccomp"] == "2" and st["NoNewPrivs"] == "1"
    kept = J.FAITHFUL_CAPS if files_mode == "faithful" else J.KEEP_CAPS
    only = f"{sum(1 << CAPS[c] for c in kept):016x}"
    for capset in ("CapEff", "CapPrm", "CapBnd", "CapAmb", "CapInh"):
        assert st[capset] == only, (capset, st[capset])
    for ns in ("mnt", "net", "ipc"):
        assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
    # what QEMU can reach: the jail, nothing of the host's /etc, /root, /run, /var, /tmp
    top = set(os.listdir(f"/proc/{pid}/root"))
    assert {"usr", "boot", "share", "image", "dev", "proc"} <= top
    assert top <= {"usr", "boot", "share", "image", "dev", "proc", "bin", "sbin", "lib",
                   "lib32", "lib64", "libx32"}, top  # fmt: skip
    assert sorted(os.listdir(f"/proc/{pid}/root/dev")) == ["null", "urandom", "zero"]
    assert sorted(os.listdir(f"/proc/{pid}/root/boot")) == ["initrd.img", "vmlinux"]
    with open(f"/proc/{pid}/mountinfo") as f:
        mountinfo = f.read()
    assert "hidepid=invisible" in mountinfo
    root_line = next(line for line in mountinfo.splitlines() if line.split()[4] == "/")
    assert root_line.split()[5].startswith("ro,"), root_line
    # no socket or file QEMU made in the state dir: it got descriptors
    assert sorted(n for n in os.listdir(f"{root}/jailed") if n.endswith(".sock")) == [
        "monitor.sock"
    ]
    hyperpy(root, "delete", "--force", "jailed", check=True)


SPECIAL_FILES = r"""
for d in / /vol/; do
  cp /bin/busybox ${d}suid && chown 0:0 ${d}suid && chmod 4755 ${d}suid
  mknod ${d}devnode c 1 3 && mknod ${d}blocknode b 7 0
  mkfifo ${d}fifo && (echo through-the-fifo > ${d}fifo &) && read line < ${d}fifo
  echo "fifo=$line"
  stat -c '%n %a %u %g %F' ${d}suid ${d}devnode ${d}blocknode ${d}fifo
done
mkdir -p /vol/sub && chown 1234:5678 /vol/sub && chmod 2750 /vol/sub && touch /vol/sub/f
echo changed >> /etc/passwd && chmod 600 /etc/passwd
stat -c '%n %a %u %g %F' /bin/busybox /etc/passwd /vol/sub
"""


@pytest.mark.parametrize("files_mode", ["strict"], indirect=True)
def test_guest_owners_modes_and_special_files_never_reach_the_host(root, bundle, tmp_path,
                                                                   files_mode):  # fmt: skip
    vol = tmp_path / "vol"
    vol.mkdir()
    b = bundle(["sh", "-ec", SPECIAL_FILES])

    def edit(spec):
        privileged(spec)
        spec["mounts"].append({"destination": "/vol", "type": "bind", "source": str(vol),
                               "options": ["rbind", "rw"]})  # fmt: skip

    edit_spec(b, edit)
    rootfs = os.path.join(b, "rootfs")
    passwd = open(os.path.join(rootfs, "etc", "passwd")).read()
    res = hyperpy(root, "run", "--bundle", b, "special")
    out = res.stdout.decode()
    assert res.returncode == 0, (out, res.stderr)
    seen = {line.split()[0]: line.split(None, 4)[1:] for line in out.splitlines() if " " in line}
    assert out.count("fifo=through-the-fifo") == 2, out
    # in the guest: what the container asked for, in its root and in a volume
    for d in ("/", "/vol/"):
        assert seen[f"{d}suid"] == ["4755", "0", "0", "regular file"]
        assert seen[f"{d}devnode"][3] == "character special file"
        assert seen[f"{d}blocknode"][3] == "block special file"
        assert seen[f"{d}fifo"][3] == "fifo"
    assert seen["/bin/busybox"] == ["755", "0", "0", "regular file"]  # image files keep theirs
    assert seen["/etc/passwd"][:3] == ["600", "0", "0"]
    assert seen["/vol/sub"][:3] == ["2750", "1234", "5678"]
    # on the host: the image is untouched (the root's writes stayed in the guest) ...
    for name in ("suid", "devnode", "blocknode", "fifo"):
        assert not os.path.lexists(os.path.join(rootfs, name))
    assert open(os.path.join(rootfs, "etc", "passwd")).read() == passwd
    assert stat.S_IMODE(os.stat(os.path.join(rootfs, "etc", "passwd")).st_mode) == 0o644
    # ... and in the volume: plain files of QEMU's unprivileged uid, no set-id bit, no device
    for name in ("suid", "devnode", "blocknode", "fifo", "sub"):
        st = os.lstat(vol / name)
        assert stat.S_ISREG(st.st_mode) or (name == "sub" and stat.S_ISDIR(st.st_mode)), name
        assert not st.st_mode & 0o7000 and st.st_uid >= 2_000_000_000, (name, oct(st.st_mode))


PLANT = r"""
S=/proc/1/root/run/hyperpy/shared
I=/proc/1/root/run/hyperpy/image
ls $S $I >/dev/null || exit 9
mkdir -p $S/next/mounts 2>&1
mkdir -p $I/next/mounts 2>&1
ln -s {hostdir} $I/next/rootfs 2>&1
ln -s {hostfile} $S/next/mounts/7 2>&1
ln -s {hostdir} $I/planter/mounts 2>&1
ln -s {hostdir} $I/planter/rootfs/mounts 2>&1 && echo linked-inside-own-rootfs
true
"""


@MODES
def test_a_privileged_guest_cannot_steer_host_mounts(root, bundle, tmp_path, files_mode):
    hostdir, hostfile, out = tmp_path / "hostdir", tmp_path / "hostfile", tmp_path / "out"
    hostdir.mkdir()
    (hostdir / "keep").write_text("keep")
    hostfile.write_text("host file")
    out.mkdir()
    s = "/proc/1/root/run/hyperpy"
    # the sandbox's init plants, then keeps trying while a member is created
    script = PLANT.format(hostdir=hostdir, hostfile=hostfile) + (
        f"while :; do mkdir {s}/shared/next {s}/image/next 2>/dev/null && echo MADE; "
        f"ln -s {hostdir} {s}/image/next/rootfs 2>/dev/null; done >> /out/race &\n"
        "echo planted > /out/done; exec sleep 1000"
    )
    b = bundle(["sh", "-c", f"( {script} ) > /out/log 2>&1"])

    def edit(spec):
        privileged(spec, pid_namespace=False)
        spec["mounts"].append({"destination": "/out", "type": "bind", "source": str(out),
                               "options": ["rbind", "rw"]})  # fmt: skip

    edit_spec(b, edit)
    create(root, b, "planter")
    hyperpy(root, "start", "planter", check=True)
    deadline = time.monotonic() + 60
    while not (out / "done").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = (out / "log").read_text()
    refused = 4 if files_mode == "strict" else 3  # faithful: its own root is writable
    assert log.count("Read-only file system") == refused and "No such file" in log, log
    if files_mode == "strict":  # the image export is read-only too
        assert "linked-inside-own-rootfs" not in log
    else:  # its own root is written through, as under runc; the host never mounts there
        assert "linked-inside-own-rootfs" in log
    member = bundle(["sh", "-c", "cat /m7/f"])
    sources = []
    for i in range(8):
        d = tmp_path / f"src{i}"
        d.mkdir()
        (d / "f").write_text(f"source {i}")
        sources.append(d)

    def edit_member(spec):
        spec["annotations"] = {"io.hyperpy.sandbox": "planter"}
        spec["mounts"] += [{"destination": f"/m{i}", "type": "bind", "source": str(d),
                            "options": ["rbind"]} for i, d in enumerate(sources)]  # fmt: skip

    edit_spec(member, edit_member)
    create(root, member, "next")
    assert not mounts_below(str(hostdir)) and not mounts_below(str(hostfile))
    hyperpy(root, "delete", "--force", "next", check=True)
    hyperpy(root, "delete", "--force", "planter", check=True)
    assert "MADE" not in (out / "race").read_text()
    assert (hostdir / "keep").read_text() == "keep" and hostfile.read_text() == "host file"
    assert sorted(os.listdir(hostdir)) == ["keep"]
    assert not mounts_below(str(tmp_path))


def _frames(sock, timeout=10.0):
    sock.settimeout(timeout)
    dec = P.Decoder()
    out = []
    while not out:
        data = sock.recv(65536)
        if not data:
            return out, True
        out += [f.message() for f in dec.feed(data) if isinstance(f, P.Frame)]
    return out, False


def _rss_kib(pid):
    return int(proc_status(pid)["VmRSS"].split()[0])


def test_monitor_bounds_hostile_clients_and_keeps_serving(root, bundle):
    create(root, bundle(["sleep", "1000"]), "fuzzed")
    hyperpy(root, "start", "fuzzed", check=True)
    with open(f"{root}/fuzzed/state.json") as f:
        monitor = json.load(f)["monitor_pid"]
    path = f"{root}/fuzzed/monitor.sock"

    def connect():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        return s

    with connect() as s:  # malformed fields: an error naming the field, no traceback
        s.sendall(P.encode_msg({"id": 7, "op": "attach", "proc": "x"}))
        (reply,), _ = _frames(s)
        assert reply["id"] == 7 and not reply["ok"] and reply["kind"] == "ProtocolError"
        assert "'proc'" in reply["error"]
        s.sendall(P.encode_msg({"id": 8, "op": "signal", "cid": 5, "signal": 9}))
        (reply,), _ = _frames(s)
        assert reply["id"] == 8 and "'cid'" in reply["error"]
        s.sendall(P.encode_msg({"id": 9, "op": "attach", "proc": 999999}))
        (reply,), _ = _frames(s)
        assert not reply["ok"] and "no process" in reply["error"]
    with connect() as s:  # an absurd length: an error, then the connection is closed
        s.sendall(P.HEADER.pack(P.MAGIC, P.PROTOCOL_VERSION, P.MSG, 0, 0xFFFFFFF0))
        frames, closed = _frames(s)
        assert frames and "exceeds the limit" in frames[0]["error"]
        if not closed:
            _, closed = _frames(s)
        assert closed
    before = _rss_kib(monitor)
    half = P.HEADER.pack(P.MAGIC, P.PROTOCOL_VERSION, P.MSG, 0, P.MAX_PAYLOAD) + b"x" * (
        P.MAX_PAYLOAD // 2
    )
    held = []
    for _ in range(300):
        try:
            c = connect()
            c.settimeout(5)
            c.sendall(half)
            held.append(c)
        except OSError:
            continue
    time.sleep(1)
    grown_mib = (_rss_kib(monitor) - before) / 1024
    try:
        assert grown_mib < 96, f"the monitor grew by {grown_mib:.0f} MiB"
        assert status_of(root, "fuzzed")["status"] == "running"
        out = hyperpy(root, "exec", "fuzzed", "echo", "still-serving", check=True)
        assert out.stdout == b"still-serving\n"
    finally:
        for c in held:
            c.close()
    with open(f"{root}/fuzzed/monitor.log") as f:
        assert "Traceback" not in f.read()
    hyperpy(root, "delete", "--force", "fuzzed", check=True)
