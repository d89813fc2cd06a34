"""The capture runtime: what a tool is pointed at as its OCI runtime while the corpus is
captured. On ``create`` it copies ``<bundle>/config.json`` (``--bundle``, default the
current directory) to ``OUT/<container id>.json``, byte for byte; then, for every verb, it
execs the real runc with the same arguments, so the tool goes on as it would with runc.

Stdlib only: ``capture.py`` writes a two-line executable that imports this module and
calls ``main(OUT)``, run by the system python3 with ``-S``.
"""

from __future__ import annotations

import os
import shutil
import sys

RUNC = "/usr/sbin/runc"
# runc's global flags and create's flags that take a value (as separate words)
GLOBAL_VALUE = {"--root", "--log", "--log-format", "--criu", "--rootless"}
CREATE_VALUE = {"--bundle", "-b", "--console-socket", "--pid-file", "--preserve-fds"}


def verb(argv: list[str]) -> tuple[str, list[str]]:
    """runc's subcommand and the words after it."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-"):
            return arg, argv[i + 1 :]
        i += 2 if arg in GLOBAL_VALUE else 1
    return "", []


def bundle_and_id(args: list[str]) -> tuple[str, str]:
    """create's --bundle (default: the current directory) and the container id."""
    bundle, cid = ".", ""
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        if name in ("--bundle", "-b"):
            if eq:
                bundle = value
            else:
                bundle = args[i + 1]
                i += 1
        elif name in CREATE_VALUE and not eq:
            i += 1
        elif not arg.startswith("-"):
            cid = arg
        i += 1
    return bundle, cid


def capture(out: str, argv: list[str]) -> None:
    command, args = verb(argv)
    if command != "create":
        return
    bundle, cid = bundle_and_id(args)
    os.makedirs(out, exist_ok=True)
    tmp = os.path.join(out, f".{cid}.json.tmp")
    shutil.copyfile(os.path.join(bundle, "config.json"), tmp)
    os.replace(tmp, os.path.join(out, f"{cid}.json"))


def main(out: str) -> None:
    try:
        capture(out, sys.argv[1:])
    except (OSError, IndexError) as exc:  # never stand between the tool and runc
        sys.stderr.write(f"capture runtime: {exc}\n")
    os.execv(RUNC, [RUNC, *sys.argv[1:]])
