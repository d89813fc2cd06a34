"""VM templates in real QEMU guests under TCG: restore correctness (rootfs, mounts, RNG,
clock, exec, stdio), invalidation, the race for a new template, fallback to a cold boot
from a damaged one, and no keeper or file left behind."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from tests.conftest import HYPERPY, hyperpy, needs_artifacts, processes_under

pytestmark = [pytest.mark.vm, needs_artifacts]


@pytest.fixture
def templates(tmp_path):
    """A template directory of the test's own, in the env hyperpy runs with; every keeper
    the test made is stopped by `template rm --all` and none may be left."""
    d = tmp_path / "templates"
    env = dict(os.environ, HYPERPY_TEMPLATES=str(d))
    yield env
    subprocess.run([HYPERPY, "template", "rm", "--all"], env=env, capture_output=True, timeout=60)
    assert not processes_under(str(d)), "a template keeper was left running"
    assert not d.exists() or not os.listdir(d), f"files left in {d}: {os.listdir(d)}"


def listed(env: dict) -> list[dict]:
    res = subprocess.run([HYPERPY, "template", "ls", "--format", "json"], env=env,
                         capture_output=True, timeout=30, check=True)  # fmt: skip
    return json.loads(res.stdout)


def monitor_log(root: str, cid: str) -> str:
    with open(os.path.join(root, cid, "monitor.log")) as f:
        return f.read()


def qemu_argv(root: str, cid: str) -> list[str]:
    with open(os.path.join(root, cid, "state.json")) as f:
        pid = json.load(f)["qemu_pid"]
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().decode().split("\0")


def create(root: str, b: str, cid: str, env: dict) -> None:
    """`create` with stdio of its own: the container's init holds what it is given (a pipe
    would stay open until the container exits)."""
    err = os.path.join(b, f"{cid}.create.err")
    with open(err, "wb") as f:
        res = subprocess.run([HYPERPY, "--root", root, "create", "--bundle", b, cid], env=env,
                             stdin=subprocess.DEVNULL, stdout=f, stderr=f, timeout=180)  # fmt: skip
    with open(err) as f:
        assert res.returncode == 0, f.read()


def run_out(root: str, b: str, cid: str, env: dict, **kw) -> str:
    res = hyperpy(root, "run", "--bundle", b, cid, env=env, **kw)
    assert res.returncode == 0, res.stderr.decode()
    return res.stdout.decode()


def test_pods_restored_from_a_template(root, bundle, templates, tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "data").write_text("from the host\n")
    script = ("cat /marker /vol/data; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; "
              "echo; date +%s; cat /proc/sys/kernel/random/boot_id")  # fmt: skip
    from hyperpy.oci.spec import default_spec

    vol_mount = {"destination": "/vol", "type": "bind", "source": str(vol),
                 "options": ["rbind", "ro"]}  # fmt: skip
    mounts = [*default_spec()["mounts"], vol_mount]
    b = bundle(["sh", "-c", script], mounts=mounts)

    def mark(cid: str) -> None:  # each pod must see its own rootfs and volume
        with open(os.path.join(b, "rootfs", "marker"), "w") as f:
            f.write(f"rootfs of {cid}\n")
        (vol / "data").write_text(f"volume of {cid}\n")

    mark("tp0")
    first = run_out(root, b, "tp0", templates)  # builds the template, then restores from it
    assert len(listed(templates)) == 1
    time.sleep(10)  # the template's clock is now well behind: a restore must set it
    outs = []
    for cid in ("tp1", "tp2"):
        mark(cid)
        create(root, b, cid, templates)
        assert "-incoming" in qemu_argv(root, cid)  # restored, not booted
        assert "restored from template" in monitor_log(root, cid)
        p = subprocess.run([HYPERPY, "--root", root, "start", cid], env=templates, timeout=60)
        assert p.returncode == 0
        deadline = time.monotonic() + 60
        while json.loads(hyperpy(root, "state", cid).stdout)["status"] != "stopped":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        hyperpy(root, "delete", cid, check=True)
        mark(cid + "r")
        out = run_out(root, b, cid + "r", templates)
        assert out.splitlines()[:2] == [f"rootfs of {cid}r", f"volume of {cid}r"], out
        assert abs(int(out.splitlines()[3]) - time.time()) < 5, f"guest clock: {out}"
        outs.append(out)
    lines = first.splitlines()
    assert lines[:2] == ["rootfs of tp0", "volume of tp0"], first
    randoms = [o.splitlines()[2] for o in (first, *outs)]
    assert len(set(randoms)) == len(randoms), f"pods share random bytes: {randoms}"
    assert len(listed(templates)) == 1  # every pod of the shape used the one template


def test_exec_and_stdio_after_restore(root, bundle, templates):
    b = bundle(["sh", "-c", "read line; echo got:$line; exec sleep 1000"])
    run_out(root, bundle(["true"]), "warm", templates)  # the template exists from here on
    pipe = subprocess.PIPE
    p = subprocess.Popen([HYPERPY, "--root", root, "run", "--bundle", b, "st1"], env=templates,
                         stdin=pipe, stdout=pipe, stderr=pipe)  # fmt: skip
    try:
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write(b"hello\n")
        p.stdin.flush()
        assert p.stdout.readline() == b"got:hello\n"
        assert "-incoming" in qemu_argv(root, "st1")
        res = hyperpy(root, "exec", "st1", "sh", "-c", "echo exec:$(hostname); exit 3")
        assert res.returncode == 3 and res.stdout.startswith(b"exec:"), res
        hyperpy(root, "kill", "st1", "KILL", check=True)
        assert p.wait(timeout=60) == 137
    finally:
        p.kill()
        p.wait()


def test_a_changed_input_makes_a_new_template(root, bundle, templates, tmp_path):
    initrd = tmp_path / "initrd.img"
    with open(os.environ.get("HYPERPY_ARTIFACTS", "/var/lib/hyperpy") + "/initrd.img", "rb") as f:
        initrd.write_bytes(f.read())
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[vm]\ninitrd = "{initrd}"\n')
    env = dict(templates, HYPERPY_CONFIG=str(cfg))
    b = bundle(["true"])
    run_out(root, b, "ch1", env)
    run_out(root, b, "ch2", env)
    assert len(listed(env)) == 1
    os.utime(initrd, (time.time() + 10, time.time() + 10))  # a rebuilt initrd
    run_out(root, b, "ch3", env)
    # a pod of another size is the same shape (docs/resize.md: the VM boots at its most)
    cfg.write_text(f'[vm]\ninitrd = "{initrd}"\nmemory_mb = 192\n')
    run_out(root, b, "ch4", env)
    assert len({t["key"] for t in listed(env)}) == 2
    cfg.write_text(f'[vm]\ninitrd = "{initrd}"\nmax_memory_mb = 1024\n')  # another shape
    run_out(root, b, "ch5", env)
    keys = [t["key"] for t in listed(env)]
    assert len(set(keys)) == 3, keys


def test_racing_first_pods_build_one_template(root, bundle, templates):
    b = bundle(["sh", "-c", "echo ok"])
    procs = [subprocess.Popen([HYPERPY, "--root", root, "run", "--bundle", b, f"race{i}"],
                              env=templates, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i in range(3)]  # fmt: skip
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0 and out == b"ok\n", err.decode()
    items = listed(templates)
    assert len(items) == 1 and items[0]["alive"], items
    assert run_out(root, b, "after", templates) == "ok\n"  # and it restores


def test_damaged_template_falls_back_to_a_cold_boot(root, bundle, templates):
    from hyperpy.vm.template import Store

    b = bundle(["sh", "-c", "echo ok"])
    run_out(root, b, "dm0", templates)
    store = Store(templates["HYPERPY_TEMPLATES"])
    (meta,) = store.list()
    held = store.fetch(meta["key"])
    assert held is not None
    try:
        # The same memory, a saved state with its middle overwritten, behind a new keeper.
        with open(f"/proc/self/fd/{held.state}", "rb") as f:
            state = bytearray(f.read())
        state[len(state) // 2 : len(state) // 2 + 4096] = os.urandom(4096)
        bad = os.memfd_create("damaged", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
        os.write(bad, state)
        import fcntl

        from hyperpy.vm import keeper

        fcntl.fcntl(bad, fcntl.F_ADD_SEALS, keeper.seals())
        store.remove(meta["key"])
        store.start_keeper(meta["key"], held.mem, bad, {"key": meta["key"], "damaged": True})
        os.close(bad)
    finally:
        held.close()
    assert listed(templates)[0].get("damaged")
    create(root, b, "dm1", templates)
    log = monitor_log(root, "dm1")
    assert "failed to restore" in log and "booting cold" in log, log
    assert "-incoming" not in qemu_argv(root, "dm1")
    hyperpy(root, "delete", "--force", "dm1", check=True)
    assert not any(t.get("damaged") for t in listed(templates))  # it was removed
    assert run_out(root, b, "dm2", templates) == "ok\n"  # a new one is built and used


def test_cold_boot_when_templates_are_off(root, bundle, templates, tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text("[template]\nenabled = false\n")
    env = dict(templates, HYPERPY_CONFIG=str(cfg))
    b = bundle(["sh", "-c", "echo cold; sleep 1000"])
    create(root, b, "cold1", env)
    assert "-incoming" not in qemu_argv(root, "cold1")
    hyperpy(root, "delete", "--force", "cold1", check=True)
    assert listed(env) == []


def test_template_build_prewarms_the_default_shape(root, bundle, templates):
    res = subprocess.run([HYPERPY, "template", "build"], env=templates, capture_output=True,
                         timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr.decode()
    (key, word) = res.stdout.decode().split()
    assert word == "built" and [t["key"] for t in listed(templates)] == [key]
    create(root, bundle(["sh", "-c", "sleep 1000"]), "pre1", templates)
    assert "-incoming" in qemu_argv(root, "pre1")  # the first pod found it built
    assert "built in" not in monitor_log(root, "pre1")
    hyperpy(root, "delete", "--force", "pre1", check=True)
