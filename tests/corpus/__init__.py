"""config.json files as docker, podman, containerd's CRI and ctr write them (``data/``),
captured by ``capture.py`` through the capture runtime (``runtime.py``)."""

from __future__ import annotations

import os
from pathlib import Path

# Every case the corpus must hold (data/<name>.json): the unit test fails when a capture
# lost one.
CASES = (
    "docker-default",
    "docker-privileged",
    "docker-read-only",
    "docker-cap-add-net-admin",
    "docker-device-fuse",
    "docker-memory-cpus",
    "docker-user",
    "podman-default",
    "podman-privileged",
    "podman-pod-infra",
    "podman-pod-container",
    "cri-sandbox-cgroupfs",
    "cri-container-cgroupfs",
    "cri-sandbox-slice",
    "cri-container-slice",
    "ctr-run",
)

CAPTURE_BASE = "/tmp/hyperpy-corpus"  # capture.py's BASE
# bind destinations whose source the tools make as a file (everything else: a directory)
FILE_DESTINATIONS = {"/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/run/.containerenv"}


def stand_ins(spec: dict, tmp: Path, rootfs: str = "") -> dict:
    """root.path (``rootfs``, or an empty directory) and the capture's bind sources, pointed
    at stand-ins under ``tmp``: the captured host paths do not exist here."""
    if not rootfs:
        rootfs = str(tmp / "rootfs")
        os.mkdir(rootfs)
    spec["root"]["path"] = rootfs
    for m in spec.get("mounts") or []:
        src = m.get("source") or ""
        if not src.startswith(CAPTURE_BASE + "/"):
            continue
        stand_in = tmp / "host" / src[len(CAPTURE_BASE) + 1 :]
        if m.get("destination") in FILE_DESTINATIONS:
            stand_in.parent.mkdir(parents=True, exist_ok=True)
            stand_in.touch()
        else:
            stand_in.mkdir(parents=True, exist_ok=True)
        m["source"] = str(stand_in)
    return spec
