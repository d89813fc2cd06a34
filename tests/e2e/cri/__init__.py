"""The CRI v1 messages the e2e tests use, written from the published api.proto; compiled at
test time.

``api.proto`` next to this file is a subset of Kubernetes' ``runtime.v1`` API (RuntimeService and
ImageService) with the upstream message names, field names and field numbers, so it can talk to
containerd's CRI plugin over its socket. Nothing generated is kept in the tree: ``load`` runs
``grpc_tools.protoc`` into a directory the caller owns and imports the two modules it writes.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType

PROTO_DIR = os.path.dirname(os.path.abspath(__file__))
PROTO_FILE = "api.proto"


def _import_from(out_dir: str, name: str) -> ModuleType:
    path = os.path.join(out_dir, f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {name} from {path}")
    module = importlib.util.module_from_spec(spec)
    # api_pb2_grpc does a plain `import api_pb2`: register the module under that name first
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load(out_dir: str) -> tuple[ModuleType, ModuleType]:
    """Compile api.proto into out_dir and return (api_pb2, api_pb2_grpc)."""
    # imported here so that merely collecting the e2e tests does not need grpcio-tools
    from grpc_tools import protoc

    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            os.path.join(PROTO_DIR, PROTO_FILE),
        ]
    )
    if rc != 0:
        raise RuntimeError(f"protoc failed on {PROTO_FILE} (exit {rc})")
    pb2 = _import_from(out_dir, "api_pb2")
    pb2_grpc = _import_from(out_dir, "api_pb2_grpc")
    return pb2, pb2_grpc
