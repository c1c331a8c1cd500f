"""Builds the grpc.aio server: servicers, health, reflection, keepalive, TLS (RELIABILITY 23, 24, 25)."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from smsgw.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    devices_pb2,
    devices_pb2_grpc,
    inbound_pb2,
    inbound_pb2_grpc,
    messages_pb2,
    messages_pb2_grpc,
    otp_pb2,
    otp_pb2_grpc,
    webhooks_pb2,
    webhooks_pb2_grpc,
)

from gateway.api.auth import AuditServicer, AuthServicer
from gateway.api.devices import DeviceServicer, PhoneUrl
from gateway.api.inbound import InboundServicer
from gateway.api.interceptors import ApiInterceptor
from gateway.api.messages import MessageServicer
from gateway.api.otp import OtpServicer
from gateway.api.reflection import enable_reflection
from gateway.api.webhooks import WebhookServicer
from gateway.auth.service import AuthService
from gateway.config import Settings
from gateway.devices.service import DeviceService
from gateway.inbound.service import InboundService
from gateway.messages.service import EventFeed, MessageService
from gateway.metrics import GatewayMetrics
from gateway.otp.service import OtpService
from gateway.tls import grpc_server_credentials
from gateway.webhooks.service import WebhookService

__all__ = ["GrpcServer", "start_grpc_server", "SERVICE_NAMES"]

SERVICE_NAMES = (
    messages_pb2.DESCRIPTOR.services_by_name["MessageService"].full_name,
    devices_pb2.DESCRIPTOR.services_by_name["DeviceService"].full_name,
    auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
    inbound_pb2.DESCRIPTOR.services_by_name["InboundService"].full_name,
    webhooks_pb2.DESCRIPTOR.services_by_name["WebhookService"].full_name,
    otp_pb2.DESCRIPTOR.services_by_name["OtpService"].full_name,
)

_SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.max_connection_age_ms", 1_800_000),
    ("grpc.max_connection_age_grace_ms", 300_000),
    ("grpc.so_reuseport", 0),
]


@dataclass
class GrpcServer:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer

    async def stop(self, grace: float) -> None:
        """Health goes NOT_SERVING for good, then in-flight RPCs get `grace` seconds."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def start_grpc_server(
    settings: Settings,
    messages: MessageService,
    devices: DeviceService,
    feed: EventFeed,
    auth: AuthService,
    metrics: GatewayMetrics,
    webhooks: WebhookService,
    *,
    inbound: InboundService,
    otp: OtpService,
    phone_url: PhoneUrl | None = None,
) -> GrpcServer:
    server = grpc.aio.server(
        interceptors=[ApiInterceptor(auth, metrics)],
        options=[*_SERVER_OPTIONS, ("grpc.max_receive_message_length", settings.grpc.max_receive_message_length)],
    )
    messages_pb2_grpc.add_MessageServiceServicer_to_server(MessageServicer(messages, feed, settings.limits), server)
    devices_pb2_grpc.add_DeviceServiceServicer_to_server(DeviceServicer(devices, phone_url), server)
    auth_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(auth), server)
    audit_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(auth), server)
    inbound_pb2_grpc.add_InboundServiceServicer_to_server(InboundServicer(inbound, feed), server)
    webhooks_pb2_grpc.add_WebhookServiceServicer_to_server(WebhookServicer(webhooks), server)
    otp_pb2_grpc.add_OtpServiceServicer_to_server(OtpServicer(otp), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection((*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name), server)
    # TLS when configured (mTLS with tls_client_ca_file); plaintext only where
    # gateway.tls.check_plaintext_allowed let it through (loopback or gateway.insecure).
    credentials = grpc_server_credentials(settings.grpc)
    if credentials is None:
        port = server.add_insecure_port(settings.grpc.listen)
    else:
        port = server.add_secure_port(settings.grpc.listen, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {settings.grpc.listen} for gRPC")
    await server.start()
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return GrpcServer(server, port, health_servicer)
