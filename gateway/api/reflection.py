"""Server reflection as grpc.reflection.v1 and v1alpha. grpcio-reflection (1.85) ships only
v1alpha, while grpcurl and newer tools ask for v1 first; the two packages' messages are the same
on the wire, so the library's servicer answers both, and a package-renamed copy of its
descriptor lets reflection describe the v1 service itself."""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

__all__ = ["V1_SERVICE_NAME", "V1ALPHA_SERVICE_NAME", "enable_reflection"]

V1ALPHA_SERVICE_NAME: str = reflection.SERVICE_NAME
V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"


def _add_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    """grpc/reflection/v1/reflection.proto into `pool`: v1alpha's file with the v1 package."""
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    old, new = f".{file.package}.", ".grpc.reflection.v1."
    file.name, file.package = _V1_FILE, "grpc.reflection.v1"
    file.ClearField("options")  # v1alpha's java/objc package names
    for message in file.message_type:
        for field in message.field:
            if field.type_name:  # set only on message and enum fields (proto2: presence counts)
                field.type_name = field.type_name.replace(old, new, 1)
    for service in file.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new, 1)
            method.output_type = method.output_type.replace(old, new, 1)
    pool.Add(file)


def enable_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Reflection on both versions; each lists `service_names` and the two reflection services."""
    _add_v1_descriptor(descriptor_pool.Default())
    servicer = reflection.aio.ReflectionServicer((*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME))
    for service in (V1ALPHA_SERVICE_NAME, V1_SERVICE_NAME):
        handler = grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {"ServerReflectionInfo": handler}),))
