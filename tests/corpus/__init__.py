"""config.json files as docker, podman, containerd's CRI and ctr write them (``data/``),
captured by ``capture.py`` through the capture runtime (``runtime.py``)."""

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
