"""Build the guest kernel from Debian's linux-source package, LinuxKit style.

The configuration is ``make tinyconfig`` with the fragments in ``kernel/fragments`` merged on
top (one subsystem per file), then ``olddefconfig``.  Kconfig silently drops a symbol whose
dependencies are not met, so every symbol a fragment asks for is checked against the final
``.config``; a missing one fails the build naming the symbol and its fragment, before the long
compile starts.

The result is cached in ``$HYPERPY_CACHE/kernel/<key>/`` (default /var/cache/hyperpy), where
``<key>`` hashes the fragments, the source package's version and this recipe's version: a second
build with nothing changed only copies the cached ``vmlinux``.

    python -m kernel.build [--out /var/lib/hyperpy/vmlinux] [--check-only] [-j N]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Bump when the recipe (commands below, not the fragments) changes what gets built.
RECIPE_VERSION = "2"  # 2: "is not set" requests reach merge_config
FRAGMENTS_DIR = Path(__file__).resolve().parent / "fragments"
SOURCE_PACKAGE = "linux-source-6.1"
SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
DEFAULT_OUT = "/var/lib/hyperpy/vmlinux"

_LINE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


class KernelBuildError(Exception):
    """The kernel could not be configured or built; the message says why."""


@dataclass(frozen=True)
class Request:
    symbol: str
    value: str  # "y", "m", "n", a number or a quoted string
    fragment: str
    line: int


def parse_config(text: str) -> dict[str, str]:
    """Symbols of a .config or fragment: ``CONFIG_X=v`` and ``# CONFIG_X is not set`` (as n)."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if m := _LINE.match(line):
            out[m.group(1)] = m.group(2)
        elif m := _UNSET.match(line):
            out[m.group(1)] = "n"
    return out


def read_fragments(directory: Path = FRAGMENTS_DIR) -> list[Request]:
    """Every symbol the fragments request, in fragment order; a symbol set twice is an error."""
    requests: list[Request] = []
    seen: dict[str, Request] = {}
    for path in sorted(directory.glob("*.conf")):
        for n, raw in enumerate(path.read_text().splitlines(), 1):
            line = raw.strip()
            if not line or (line.startswith("#") and not _UNSET.match(line)):
                continue
            m = _LINE.match(line) or _UNSET.match(line)
            if not m:
                raise KernelBuildError(f"{path}:{n}: not a Kconfig line: {raw!r}")
            value = m.group(2) if m.re is _LINE else "n"
            req = Request(m.group(1), value, path.name, n)
            if req.symbol in seen and seen[req.symbol].value != value:
                first = seen[req.symbol]
                raise KernelBuildError(
                    f"{path.name}:{n}: {req.symbol}={value} contradicts "
                    f"{first.fragment}:{first.line} ({first.value})"
                )
            seen[req.symbol] = req
            requests.append(req)
    if not requests:
        raise KernelBuildError(f"no config fragments (*.conf) in {directory}")
    return requests


def missing_symbols(requests: list[Request], final: dict[str, str]) -> list[str]:
    """Human-readable lines for every request the final config did not honour."""
    problems = []
    for req in requests:
        got = final.get(req.symbol, "n")
        if got != req.value:
            have = got if req.symbol in final else "nothing (unknown or unmet dependency)"
            problems.append(
                f"{req.symbol}: {req.fragment}:{req.line} asks for {req.value}, "
                f"the final .config has {have}"
            )
    return problems


def source_version() -> str:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", SOURCE_PACKAGE],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise KernelBuildError(
            f"{SOURCE_PACKAGE} is not installed ({exc}): run `apt-get install {SOURCE_PACKAGE}` "
            "or `make deps`"
        ) from exc
    return out


def cache_key(version: str, directory: Path = FRAGMENTS_DIR) -> str:
    h = hashlib.sha256()
    h.update(f"recipe={RECIPE_VERSION}\nsource={SOURCE_PACKAGE}={version}\n".encode())
    for path in sorted(directory.glob("*.conf")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def cache_root() -> Path:
    return Path(os.environ.get("HYPERPY_CACHE", "/var/cache/hyperpy")) / "kernel"


def _say(msg: str) -> None:
    print(f"[kernel] {msg}", flush=True)


def _unpack_source(version: str) -> Path:
    src = cache_root() / f"src-{version}"
    if (src / "Makefile").exists():
        return src
    if not SOURCE_TARBALL.exists():
        raise KernelBuildError(
            f"{SOURCE_TARBALL} is missing: run `apt-get install {SOURCE_PACKAGE}` or `make deps`"
        )
    tmp = src.with_name(src.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _say(f"unpacking {SOURCE_TARBALL} (about a minute)")
    res = subprocess.run(
        ["tar", "-xf", str(SOURCE_TARBALL), "-C", str(tmp)], capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    if res.returncode != 0:
        raise KernelBuildError(f"unpacking {SOURCE_TARBALL} failed: {res.stderr[-1000:]}")
    (inner,) = list(tmp.iterdir())
    inner.rename(src)
    tmp.rmdir()
    return src


def _make(src: Path, obj: Path, *targets: str, jobs: int = 1, log: Path | None = None) -> None:
    argv = ["make", "-C", str(src), f"O={obj}", f"-j{jobs}", *targets]
    if log is None:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            raise KernelBuildError(f"{' '.join(argv)} failed:\n{res.stderr[-3000:]}")
        return
    _make_with_progress(argv, log)


def _make_with_progress(argv: list[str], log: Path) -> None:
    """Run the long compile, printing a progress line every 20 s and the log tail on failure."""
    start = time.monotonic()
    compiled = 0
    last = start
    with open(log, "w") as logf:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            logf.write(line)
            if line.lstrip().startswith(("CC ", "AS ", "LD ")):
                compiled += 1
            now = time.monotonic()
            if now - last >= 20:
                last = now
                _say(f"{compiled} objects built, {now - start:.0f} s, last: {line.strip()[:60]}")
        rc = proc.wait(timeout=3600)
    if rc != 0:
        tail = log.read_text()[-3000:]
        raise KernelBuildError(f"kernel build failed (exit {rc}); full log {log}:\n{tail}")
    _say(f"compiled {compiled} objects in {time.monotonic() - start:.0f} s")


def configure(src: Path, obj: Path, requests: list[Request]) -> None:
    obj.mkdir(parents=True, exist_ok=True)
    _make(src, obj, "tinyconfig")
    merged = obj / "hyperpy-fragments.conf"
    merged.write_text(
        "".join(
            f"# {r.symbol} is not set\n" if r.value == "n" else f"{r.symbol}={r.value}\n"
            for r in requests
        )
    )
    res = subprocess.run(
        [str(src / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(obj),
         str(obj / ".config"), str(merged)],
        capture_output=True, text=True, timeout=120, cwd=obj,
    )  # fmt: skip
    if res.returncode != 0:
        raise KernelBuildError(f"merge_config.sh failed:\n{res.stdout[-2000:]}{res.stderr}")
    _make(src, obj, "olddefconfig")
    problems = missing_symbols(requests, parse_config((obj / ".config").read_text()))
    if problems:
        raise KernelBuildError(
            "the final .config does not have what the fragments ask for (fix the fragment, "
            "usually by adding the dependency Kconfig names for the symbol):\n  "
            + "\n  ".join(problems)
        )


def build(out: str, jobs: int, check_only: bool = False) -> Path:
    requests = read_fragments()
    version = source_version()
    key = cache_key(version)
    entry = cache_root() / key
    vmlinux = entry / "vmlinux"
    if vmlinux.exists() and not check_only:
        _say(f"cached: {vmlinux} (key {key}: fragments + {SOURCE_PACKAGE} {version})")
    else:
        src = _unpack_source(version)
        obj = cache_root() / f"build-{key}"
        _say(f"configuring {SOURCE_PACKAGE} {version}: tinyconfig + {len(requests)} symbols")
        configure(src, obj, requests)
        _say("configuration has every requested symbol")
        if check_only:
            return obj / ".config"
        _say(f"building vmlinux with -j{jobs} (about 9 min on 2 cores under load)")
        _make(src, obj, "vmlinux", jobs=jobs, log=obj / "build.log")
        tmp = entry.with_name(entry.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        shutil.copy2(obj / "vmlinux", tmp / "vmlinux")
        shutil.copy2(obj / ".config", tmp / "config")
        shutil.rmtree(entry, ignore_errors=True)
        tmp.rename(entry)
        shutil.rmtree(obj, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    shutil.copy2(vmlinux, out + ".tmp")
    os.replace(out + ".tmp", out)
    shutil.copy2(entry / "config", out + ".config")
    _say(f"installed {out} ({os.path.getsize(out) // 1024} KiB)")
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kernel.build", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help="where to install vmlinux")
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--check-only", action="store_true", help="configure and check, no compile")
    ap.add_argument("--cache-key", action="store_true",
                    help="print this kernel's key in the cache (CI caches by it)")  # fmt: skip
    args = ap.parse_args(argv)
    try:
        if args.cache_key:
            print(cache_key(source_version()))
            return 0
        build(args.out, args.jobs, args.check_only)
    except KernelBuildError as exc:
        print(f"kernel build: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
