"""Writes the ``hyperpy`` launcher into a venv's bin: Python started with ``-ES``.

pip's console script starts Python with site, which in an editable install also runs the
setuptools finder (pathlib, urllib, ...): about 13 ms of a hot verb's budget, paid by every
call containerd's shim makes. The launcher starts the venv's Python without site (``-S``)
and without PYTHON* variables (``-E``: a runtime that runs as root takes no code path from
its caller's environment), puts the directory holding the ``hyperpy`` and ``agent``
packages on sys.path itself, and runs :func:`hyperpy.entry.main`, which sets site up only
before falling back to click. ``make deps`` runs ``python -m hyperpy.launcher
.venv/bin/hyperpy`` after pip has written its script there.
"""

from __future__ import annotations

import os
import sys

TEMPLATE = """#!{python} -ES
# Written by `python -m hyperpy.launcher` (make deps): see hyperpy/launcher.py.
import sys

sys.path.insert(0, {packages!r})
from hyperpy.entry import main

main()
"""


def render(python: str, packages: str) -> str:
    return TEMPLATE.format(python=python, packages=packages)


def write(target: str, python: str = sys.executable) -> None:
    import hyperpy

    packages = os.path.dirname(os.path.dirname(os.path.abspath(hyperpy.__file__)))
    tmp = f"{target}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(render(python, packages))
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m hyperpy.launcher PATH (e.g. .venv/bin/hyperpy)")
    write(sys.argv[1])


if __name__ == "__main__":
    main()
