"""Build a container image archive from Debian's busybox-static, without a registry.

The archive carries both layouts in one tar, as ``docker save`` does since Docker 25: an OCI
image layout (``oci-layout``, ``index.json``, ``blobs/sha256/...``) for ``ctr images
import``, and Docker's ``manifest.json`` for ``docker load`` (Debian's docker.io 20.10 reads
only that).  Blobs are stored once.  The layer is a deterministic tar of the rootfs that
:func:`hyperpy.bundle.make_rootfs` makes.

    python -m hyperpy.image OUT.tar [--name hyperpy/busybox:latest]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import tarfile
import tempfile

DEFAULT_NAME = "hyperpy/busybox:latest"
ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]


def _layer_tar(rootfs: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(rootfs):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                path = os.path.join(dirpath, name)
                info = tar.gettarinfo(path, arcname=os.path.relpath(path, rootfs))
                info.mtime = 0
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                if info.isfile():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    return buf.getvalue()


def _blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def build(out: str, name: str = DEFAULT_NAME, cmd: list[str] | None = None) -> str:
    """Write the archive; return the image's full reference (docker.io/...)."""
    from hyperpy.bundle import make_rootfs

    repo, _, tag = name.rpartition(":") if ":" in name.split("/")[-1] else (name, "", "latest")
    full = repo if "/" in repo and "." in repo.split("/")[0] else f"docker.io/{repo}"
    with tempfile.TemporaryDirectory() as tmp:
        rootfs = os.path.join(tmp, "rootfs")
        make_rootfs(rootfs)
        layer = _layer_tar(rootfs)
    layer_digest, _ = _blob(layer)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ENV, "Cmd": cmd or ["sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created_by": "hyperpy.image from Debian's busybox-static"}],
    }
    config_digest, config_bytes = _blob(json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": len(config_bytes),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": len(layer),
            }
        ],
    }
    manifest_digest, manifest_bytes = _blob(json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "annotations": {
                    "io.containerd.image.name": f"{full}:{tag}",
                    "org.opencontainers.image.ref.name": tag,
                },
            }
        ],
    }
    docker_manifest = [
        {
            "Config": f"blobs/sha256/{config_digest[7:]}",
            "RepoTags": [f"{repo}:{tag}"],
            "Layers": [f"blobs/sha256/{layer_digest[7:]}"],
        }
    ]
    files = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps(index).encode(),
        "manifest.json": json.dumps(docker_manifest).encode(),
        "repositories": json.dumps({repo: {tag: layer_digest[7:]}}).encode(),
    }
    for digest, data in ((layer_digest, layer), (config_digest, config_bytes),
                         (manifest_digest, manifest_bytes)):  # fmt: skip
        files[f"blobs/sha256/{digest[7:]}"] = data
    with tarfile.open(out + ".tmp", "w") as tar:
        for d in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    os.replace(out + ".tmp", out)
    return f"{full}:{tag}"


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m hyperpy.image", description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--name", default=DEFAULT_NAME)
    args = ap.parse_args()
    print(build(args.out, args.name))


if __name__ == "__main__":
    main()
