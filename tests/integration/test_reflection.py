"""The real server answers ServerReflectionInfo as grpc.reflection.v1 (what grpcurl and newer tools
ask first) and as v1alpha: list services, and the file containing a symbol. Raw stream calls by
method path; v1's messages are v1alpha's on the wire (same fields and numbers)."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from tests.helpers.server import ServerProcess

VERSIONS = ["grpc.reflection.v1", "grpc.reflection.v1alpha"]


def _ask(target: str, package: str, *requests: reflection_pb2.ServerReflectionRequest) -> list[reflection_pb2.ServerReflectionResponse]:
    with grpc.insecure_channel(target) as channel:
        call = channel.stream_stream(
            f"/{package}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        return list(call(iter(requests), timeout=10))


def _files(response: reflection_pb2.ServerReflectionResponse) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    assert response.WhichOneof("message_response") == "file_descriptor_response", response
    files = [descriptor_pb2.FileDescriptorProto.FromString(raw) for raw in response.file_descriptor_response.file_descriptor_proto]
    return {f.name: f for f in files}


@pytest.mark.parametrize("package", VERSIONS)
def test_reflection_lists_services_and_finds_files(shared_server: ServerProcess, package: str) -> None:
    listed, messages, own = _ask(
        shared_server.grpc_target, package,
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="smsgw.v1.MessageService"),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=f"{package}.ServerReflection"),
    )
    names = {s.name for s in listed.list_services_response.service}
    assert {"smsgw.v1.MessageService", "smsgw.v1.AuthService", "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} <= names

    files = _files(messages)
    assert {"smsgw/v1/messages.proto", "google/rpc/status.proto", "google/protobuf/timestamp.proto"} <= set(files)
    assert "SendMessage" in [m.name for m in files["smsgw/v1/messages.proto"].service[0].method]

    [reflection_file] = [f for f in _files(own).values() if f.package == package]
    [method] = reflection_file.service[0].method
    assert (method.name, method.input_type, method.output_type) == (
        "ServerReflectionInfo", f".{package}.ServerReflectionRequest", f".{package}.ServerReflectionResponse")
    assert method.client_streaming and method.server_streaming
