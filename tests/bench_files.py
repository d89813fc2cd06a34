"""`make bench`, the files' part (issue 24): a container's file I/O under runc, under hyperpy
with ``[vm] files = "faithful"`` (the default: 9p passthrough, written through) and with
``"strict"`` (the earlier path: the root in a guest tmpfs overlay, volumes mapped-xattr).

In the container's root and in a read-write volume: a sequential write of ``SIZE_MIB``
(fsync'd) and its read back, the untar of a ``FILES``-file tree and an ``ls -lR`` walk over
it; timed inside the container from /proc/uptime (the guest's clock), each a median of
``runs``. And the cold and template start of ``true`` in both modes.
"""

from __future__ import annotations

import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile

HYPERPY = os.path.join(os.path.dirname(sys.executable), "hyperpy")
SIZE_MIB = 256
FILES = 5000
OPS = ("write", "read", "untar", "walk")
SCRIPT = r"""
t() { cut -d' ' -f1 /proc/uptime; }
D=$1; a=$(t)
dd if=/dev/zero of=$D/f bs=1M count={size} conv=fsync 2>/dev/null || echo no-space; b=$(t)
dd if=$D/f of=/dev/null bs=1M 2>/dev/null; c0=$(t)
rm $D/f; mkdir $D/tree; c=$(t)
tar -xf /src/tree.tar -C $D/tree && sync; d=$(t)
ls -lR $D/tree > /dev/null; e=$(t)
rm -rf $D/tree
echo "times $a $b $c0 $c $d $e"
"""


def _tree(path: str) -> None:
    """A tar of FILES small files in 50 directories (a node_modules-like tree)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(FILES):
            data = (b"x" * (i % 2000)) + b"\n"
            info = tarfile.TarInfo(f"d{i % 50}/f{i}.js")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def _bundle(work: str, name: str, where: str, src: str, vol: str) -> str:
    import json

    from hyperpy.bundle import make_bundle

    b = os.path.join(work, name)
    os.makedirs(b)
    make_bundle(b, ["sh", "-c", SCRIPT.replace("{size}", str(SIZE_MIB)), "sh", where])
    path = os.path.join(b, "config.json")
    with open(path) as f:
        spec = json.load(f)
    spec["mounts"] += [
        {"destination": "/src", "type": "bind", "source": src, "options": ["rbind", "ro"]},
        {"destination": "/vol", "type": "bind", "source": vol, "options": ["rbind", "rw"]},
    ]
    with open(path, "w") as f:
        json.dump(spec, f)
    os.makedirs(os.path.join(b, "rootfs", "work"))
    return b


def _one(argv: list[str], env: dict) -> dict[str, float]:
    res = subprocess.run(argv, capture_output=True, env=env, timeout=600)
    line = next((ln for ln in res.stdout.decode().splitlines() if ln.startswith("times ")), "")
    if res.returncode != 0 or not line:
        raise SystemExit(f"bench: {argv} failed ({res.returncode}): {res.stderr.decode()[-500:]}")
    a, b, c0, c, d, e = (float(x) for x in line.split()[1:])
    if "no-space" in res.stdout.decode():  # strict's root: a tmpfs of half the VM's RAM
        return {"write": float("nan"), "read": float("nan"), "untar": d - c, "walk": e - d}
    return {"write": b - a, "read": c0 - b, "untar": d - c, "walk": e - d}


def report(work: str, runs: int, envs: dict[str, dict]) -> tuple[float, float]:
    """Prints the table; returns (root write MiB/s hyperpy/runc, root untar hyperpy/runc)."""
    base = os.path.join(work, "files")
    os.makedirs(base)
    src = os.path.join(base, "src")
    os.makedirs(src)
    _tree(os.path.join(src, "tree.tar"))
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    runners = ("runc", "faithful", "strict")
    n = 0
    for _ in range(runs):
        for runner in runners:
            for where in ("/work", "/vol"):
                n += 1
                vol = os.path.join(base, f"vol{n}")
                os.makedirs(vol)
                b = _bundle(base, f"b{n}", where, src, vol)
                if runner == "runc":
                    argv = ["runc", "--root", os.path.join(base, "runc"), "run", "--bundle", b,
                            f"hyperpy-bench-files-{n}"]  # fmt: skip
                else:
                    argv = [HYPERPY, "--root", os.path.join(base, "root"), "run", "--bundle",
                            b, f"files-{n}"]  # fmt: skip
                results.setdefault((runner, where), []).append(_one(argv, envs[runner]))
                shutil.rmtree(b)
                shutil.rmtree(vol)
    med = {k: {op: statistics.median(s[op] for s in v) for op in OPS} for k, v in results.items()}
    mibs = {k: {op: SIZE_MIB / m[op] if m[op] > 0 else float("nan") for op in ("write", "read")}
            for k, m in med.items()}  # fmt: skip
    print(f"\nfiles: {SIZE_MIB} MiB written (fsync) and read, a {FILES}-file untar and its "
          f"ls -lR walk; medians of {runs}, timed in the container")  # fmt: skip
    print("  where   runner      write MiB/s  read MiB/s   untar s   walk s")
    for where, label in (("/work", "root"), ("/vol", "volume")):
        for runner in runners:
            m, x = med[(runner, where)], mibs[(runner, where)]
            print(f"  {label:<8}{runner:<12}{x['write']:11.0f}{x['read']:12.0f}"
                  f"{m['untar']:10.2f}{m['walk']:9.2f}")  # fmt: skip
    print(
        f"  (nan: strict's root is a guest tmpfs of half the VM's RAM: {SIZE_MIB} MiB do not fit)"
    )
    write_ratio = mibs[("faithful", "/work")]["write"] / mibs[("runc", "/work")]["write"]
    untar_ratio = med[("faithful", "/work")]["untar"] / max(med[("runc", "/work")]["untar"], 0.01)
    print(f"  ratios, root, faithful/runc: write MiB/s {write_ratio:.2f}, untar time "
          f"{untar_ratio:.1f}x")  # fmt: skip
    return write_ratio, untar_ratio


def envs(work: str) -> dict[str, dict]:
    """The environments of the three runners (``[vm] files`` per hyperpy mode)."""
    out = {"runc": dict(os.environ)}
    for mode in ("faithful", "strict"):
        path = os.path.join(work, f"files-{mode}.toml")
        with open(path, "w") as f:
            f.write(f'[vm]\nfiles = "{mode}"\n')
        out[mode] = dict(os.environ, HYPERPY_CONFIG=path)
    return out


def report_start(cold_run, root: str, bundle: str, runs: int, faithful: tuple[list, list],
                 work: str) -> None:  # fmt: skip
    """The cold and template start of ``true`` with ``files = "strict"`` beside the default
    (``faithful``: the lists the main bench measured), interleaved."""
    strict = {}
    for enabled in (False, True):
        path = os.path.join(work, f"files-strict-template-{enabled}.toml")
        with open(path, "w") as f:
            f.write(f'[vm]\nfiles = "strict"\n[template]\nenabled = {str(enabled).lower()}\n')
        strict[enabled] = dict(os.environ, HYPERPY_CONFIG=path,
                               HYPERPY_TEMPLATES=os.path.join(work, "tpl"))  # fmt: skip
    cold_run(root, bundle, 899, env=strict[True])  # builds the strict shape's template
    cold, tmpl = [], []
    for n in range(runs):
        cold.append(cold_run(root, bundle, 700 + n, env=strict[False]))
        tmpl.append(cold_run(root, bundle, 800 + n, env=strict[True]))
    print("\nstart of `true` by [vm] files (s, medians)   cold  template  template/cold")
    for name, (c, t) in (("faithful (default)", faithful), ("strict", (cold, tmpl))):
        mc, mt = statistics.median(c), statistics.median(t)
        print(f"  {name:<42}{mc:7.3f}{mt:9.3f}{mt / mc:11.2f}")
