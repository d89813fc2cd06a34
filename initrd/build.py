"""Build the guest initrd: busybox-static, Debian's python3.11 with only the modules the agent
needs, and the agent as /init.

The module set is what the guest interpreter loads when it imports the agent (see
``agent_modules``).  Modules ship as sourceless ``.pyc`` files compiled here
(optimised, unchecked-hash), so the guest never compiles or stats a source file: imports are
the slow part of the agent's start under TCG.  Shared libraries come from ``ldd`` on the
interpreter and the extension modules.  The archive is an uncompressed newc cpio
(``initrd.cpio``), byte-reproducible: two builds of the same inputs give the same bytes.

    python -m initrd.build [--out /var/lib/hyperpy/initrd.img] [--bare]

``--bare`` builds the trivial initrd used by the benchmark's baseline and the KVM probe:
busybox only, with an /init that reboots (QEMU runs with -no-reboot, so the VM exits).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import marshal
import os
import stat
import subprocess
import sys
from pathlib import Path

from initrd import cpio

REPO = Path(__file__).resolve().parent.parent
GUEST_PYTHON = "/usr/bin/python3.11"
STDLIB = "/usr/lib/python3.11"
DYNLOAD = f"{STDLIB}/lib-dynload"
BUSYBOX = "/bin/busybox"
AGENT_DIR = "opt/hyperpy"
BARE_INIT = b"#!/bin/busybox sh\n/bin/busybox reboot -f\n"


class InitrdBuildError(Exception):
    pass


def _need(path: str, package: str) -> None:
    if not os.path.exists(path):
        raise InitrdBuildError(f"{path} is missing: run `apt-get install {package}` or `make deps`")


def _pyc(source: bytes, filename: str) -> bytes:
    """An unchecked-hash pyc: loaded without stat-ing any source, stable across builds."""
    from importlib._bootstrap_external import _code_to_hash_pyc  # type: ignore[attr-defined]

    code = compile(source, filename, "exec", dont_inherit=True, optimize=2)
    data = _code_to_hash_pyc(code, importlib.util.source_hash(source), checked=False)
    assert marshal.loads(data[16:]) is not None
    return bytes(data)


def _dirs_for(path: str, have: dict[str, cpio.Entry]) -> None:
    parts = path.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        d = "/".join(parts[:i])
        if d not in have:
            have[d] = cpio.directory(d)


def _add(have: dict[str, cpio.Entry], entry: cpio.Entry) -> None:
    _dirs_for(entry.path, have)
    old = have.get(entry.path)
    if old is not None and old != entry:
        raise InitrdBuildError(f"initrd: two different entries for /{entry.path}")
    have[entry.path] = entry


def _add_host_file(have: dict[str, cpio.Entry], host: str, guest: str | None = None) -> None:
    real = os.path.realpath(host)
    perm = stat.S_IMODE(os.stat(real).st_mode)
    with open(real, "rb") as f:
        _add(have, cpio.file((guest or host).lstrip("/"), f.read(), perm))


def _shared_libs(binaries: list[str]) -> list[str]:
    """Host paths of every library ``ldd`` resolves for the binaries, the loader included."""
    libs: set[str] = set()
    for b in binaries:
        res = subprocess.run(["ldd", b], capture_output=True, text=True, timeout=30)
        if res.returncode != 0:
            if "not a dynamic executable" in res.stdout + res.stderr:
                continue
            raise InitrdBuildError(f"ldd {b} failed: {res.stderr.strip()}")
        for line in res.stdout.splitlines():
            words = line.split()
            if "=>" in words:
                target = words[words.index("=>") + 1]
                if target.startswith("/"):
                    libs.add(target)
            elif words and words[0].startswith("/"):
                libs.add(words[0])
    return sorted(libs)


def agent_imports() -> list[str]:
    """Every module any agent source imports, function-local imports included (via ast)."""
    names = {"agent.init"}
    for path in sorted((REPO / "agent").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
    names.discard("__future__")
    return sorted(n for n in names if n != "agent.init")


_PROBE = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
out = {}
for name, mod in sorted(sys.modules.items()):
    f = getattr(mod, "__file__", None)
    if f:
        out[name] = f
print(json.dumps(out))
"""


def agent_modules() -> dict[str, str]:
    """module name -> host file (.py or .so) for what importing the agent really loads.

    The guest interpreter itself imports every agent module and every module named in an
    import statement of the agent (even inside a function), with the flags /init uses; what
    ends up in sys.modules is the closure.  modulefinder would also follow branches that never
    run (it pulled in email, decimal and lzma: 3x the size).
    """
    import json

    res = subprocess.run(
        [GUEST_PYTHON, "-S", "-E", "-c", _PROBE, *agent_imports()],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env={"PYTHONPATH": "", "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip
    if res.returncode != 0:
        raise InitrdBuildError(f"importing the agent with {GUEST_PYTHON} failed:\n{res.stderr}")
    mods: dict[str, str] = json.loads(res.stdout)
    out = {}
    for name, host in mods.items():
        if name.startswith("agent.") or host.startswith((STDLIB + "/", DYNLOAD + "/")):
            out[name] = os.path.realpath(host) if host.endswith(".so") else host
    missing = [
        m for m in ("agent.main", "agent.container", "agent.protocol", "json") if m not in out
    ]
    if missing:
        raise InitrdBuildError(f"import closure of the agent lacks {missing}")
    return out


def busybox_entries(have: dict[str, cpio.Entry]) -> None:
    _need(BUSYBOX, "busybox-static")
    _add_host_file(have, BUSYBOX, "bin/busybox")
    res = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, timeout=30)
    for applet in res.stdout.split():
        if applet != "busybox" and "/" not in applet:
            _add(have, cpio.symlink(f"bin/{applet}", "busybox"))


def base_entries(have: dict[str, cpio.Entry]) -> None:
    for d in ("dev", "proc", "sys", "run", "root", "etc", "lib64"):
        _add(have, cpio.directory(d))
    _add(have, cpio.directory("tmp", 0o1777))
    _add(have, cpio.chardev("dev/console", 5, 1))
    _add(have, cpio.chardev("dev/null", 1, 3, 0o666))
    _add(have, cpio.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"))
    _add(have, cpio.file("etc/group", b"root:x:0:\n"))


def full_entries() -> dict[str, cpio.Entry]:
    _need(GUEST_PYTHON, "python3.11")
    have: dict[str, cpio.Entry] = {}
    base_entries(have)
    busybox_entries(have)
    _add_host_file(have, GUEST_PYTHON)
    extensions = []
    for name, host in sorted(agent_modules().items()):
        if host.endswith(".so"):
            _add_host_file(have, host)
            extensions.append(host)
            continue
        if name.startswith("agent."):
            guest = f"{AGENT_DIR}/{os.path.relpath(host, REPO)}"
        else:
            guest = os.path.relpath(host, "/")
        guest = guest[:-3] + ".pyc"
        with open(host, "rb") as f:
            _add(have, cpio.file(guest, _pyc(f.read(), "/" + guest[:-1])))
    for lib in _shared_libs([GUEST_PYTHON, *extensions]):
        # The loader is looked up at the path baked into the ELF; libraries in the
        # multiarch directory Debian's ld.so searches by default.
        _add_host_file(have, lib, lib if lib.startswith("/lib64/") else None)
    with open(REPO / "agent" / "init.py", "rb") as f:
        _add(have, cpio.file("init", f.read(), 0o755))
    return have


def bare_entries() -> dict[str, cpio.Entry]:
    have: dict[str, cpio.Entry] = {}
    base_entries(have)
    _need(BUSYBOX, "busybox-static")
    _add_host_file(have, BUSYBOX, "bin/busybox")
    _add(have, cpio.file("init", BARE_INIT, 0o755))
    return have


def build(out: str, bare: bool) -> int:
    have = bare_entries() if bare else full_entries()
    data = cpio.write(list(have.values()))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".tmp", "wb") as f:
        f.write(data)
    os.replace(out + ".tmp", out)
    return len(data)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m initrd.build", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="/var/lib/hyperpy/initrd.img")
    ap.add_argument("--bare", action="store_true", help="busybox-only initrd that reboots")
    args = ap.parse_args(argv)
    if sys.version_info[:2] != (3, 11):
        print("initrd build: run with Python 3.11 (the guest's pyc format)", file=sys.stderr)
        return 1
    try:
        size = build(args.out, args.bare)
    except InitrdBuildError as exc:
        print(f"initrd build: {exc}", file=sys.stderr)
        return 1
    print(f"[initrd] {args.out}: {size / 1048576:.1f} MiB ({size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
