"""Demo and test bundles made from Debian's busybox-static: a rootfs and a config.json.

Owns the embedded default the README's first command runs, and the bundles the tests and
the image builder use. ``python -m hyperpy.bundle DIR [ARGS...]`` writes one.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

from hyperpy import proc
from hyperpy.errors import ArtifactMissing

BUSYBOX = "/bin/busybox"


def make_rootfs(rootfs: str, busybox: str = BUSYBOX) -> None:
    if not os.path.exists(busybox):
        raise ArtifactMissing(f"{busybox} is missing: apt-get install busybox-static")
    for d in ("bin", "dev", "etc", "proc", "sys", "tmp", "root", "run", "var/tmp"):
        os.makedirs(os.path.join(rootfs, d), exist_ok=True)
    os.chmod(os.path.join(rootfs, "tmp"), 0o1777)
    target = os.path.join(rootfs, "bin", "busybox")
    shutil.copy2(busybox, target)
    applets = proc.run([busybox, "--list"], timeout=10).stdout.decode().split()
    for name in applets:
        link = os.path.join(rootfs, "bin", name)
        if not os.path.lexists(link):
            os.symlink("busybox", link)
    with open(os.path.join(rootfs, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    with open(os.path.join(rootfs, "etc", "group"), "w") as f:
        f.write("root:x:0:\nnogroup:x:65534:\n")


def make_bundle(
    bundle: str,
    args: list[str],
    *,
    terminal: bool = False,
    readonly: bool = False,
    **overrides: object,
) -> dict:
    """A busybox bundle running ``args``; ``overrides`` replace top-level spec keys."""
    from hyperpy.oci.spec import default_spec

    rootfs = os.path.join(bundle, "rootfs")
    if not os.path.exists(os.path.join(rootfs, "bin", "busybox")):
        make_rootfs(rootfs)
    spec = default_spec()
    spec["process"]["args"] = list(args)
    spec["process"]["terminal"] = terminal
    spec["root"]["readonly"] = readonly
    spec.update(overrides)
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(spec, f, indent=2)
    return spec


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m hyperpy.bundle DIR [ARGS...]")
    args = sys.argv[2:] or ["sh", "-c", "echo hello from hyperpy"]
    os.makedirs(sys.argv[1], exist_ok=True)
    make_bundle(sys.argv[1], args)
    print(sys.argv[1])


if __name__ == "__main__":
    main()
