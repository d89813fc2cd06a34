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


def with_site() -> None:
    """Set site up now if the launcher started Python without it: the caller needs a
    third-party package after all (click, libvirt-python)."""
    if sys.flags.no_site and "site" not in sys.modules:
        import site

        site.main()


def render(python: str, packages: str) -> str:
    return TEMPLATE.format(python=python, packages=packages)


def packages_dir() -> str:
    """The directory holding the ``hyperpy`` and ``agent`` packages."""
    import hyperpy

    return os.path.dirname(os.path.dirname(os.path.abspath(hyperpy.__file__)))


def bootstrap(module: str) -> str:
    """``python -S -c`` code running ``module.main(argv)``: the packages' directory comes as
    argv[1] and is appended to sys.path, after the standard library (nothing there can
    shadow it)."""
    return (
        "import sys; sys.path.append(sys.argv.pop(1)); "
        f"from {module} import main; main(sys.argv[1:])"
    )


def lean_argv(module: str, *args: str) -> list[str]:
    """The command that runs ``module.main(args)`` under ``python -S`` (no site: the
    processes hyperpy starts on a pod's path, the jailer and a template's keeper)."""
    return [sys.executable, "-S", "-c", bootstrap(module), packages_dir(), *args]


def write(target: str, python: str = sys.executable) -> None:
    packages = packages_dir()
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
