"""proto/ is self-contained: protoc with `-I proto` alone compiles every file (the google/rpc
files are shipped beside ours), and those copies are still googleapis-common-protos' own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import google.rpc.status_pb2

PROTO = Path(__file__).resolve().parents[2] / "proto"
GOOGLEAPIS = Path(google.rpc.status_pb2.__file__).parents[2]
SHIPPED = sorted(p.relative_to(PROTO).as_posix() for p in (PROTO / "google").rglob("*.proto"))


def _protoc(*args: str) -> subprocess.CompletedProcess[str]:
    # grpc_tools.protoc adds its bundled google/protobuf well-known types, as protoc's own install does.
    return subprocess.run([sys.executable, "-m", "grpc_tools.protoc", *args], capture_output=True, text=True, timeout=120)


def test_protoc_compiles_every_proto_with_only_proto_on_the_include_path(tmp_path: Path) -> None:
    files = sorted(p.relative_to(PROTO).as_posix() for p in PROTO.rglob("*.proto"))
    assert "smsgw/v1/messages.proto" in files and "google/rpc/status.proto" in files
    done = _protoc(f"-I{PROTO}", f"--descriptor_set_out={tmp_path / 'all.pb'}", "--include_imports", *files)
    assert done.returncode == 0, done.stderr


def test_shipped_google_protos_are_googleapis_common_protos_copies() -> None:
    assert SHIPPED == ["google/rpc/code.proto", "google/rpc/error_details.proto", "google/rpc/status.proto"]
    for name in SHIPPED:
        assert (PROTO / name).read_bytes() == (GOOGLEAPIS / name).read_bytes(), name
