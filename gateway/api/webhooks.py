"""smsgw.v1.WebhookService: register endpoints, test them, read their deliveries."""

from __future__ import annotations

from typing import Any

import grpc
from smsgw.v1 import webhooks_pb2, webhooks_pb2_grpc

from gateway.api.convert import attempt_to_pb, delivery_to_pb, webhook_to_pb
from gateway.api.cursors import decode_page_token, encode_page_token, page_limit
from gateway.api.validation import require
from gateway.api.interceptors import current_owner
from gateway.errors import InvalidArgument
from gateway.webhooks.records import DeliveryState
from gateway.webhooks.service import WebhookService

__all__ = ["WebhookServicer"]

Context = grpc.aio.ServicerContext[Any, Any]

_DELIVERY_PREFIX = "msg_"


class WebhookServicer(webhooks_pb2_grpc.WebhookServiceServicer):
    def __init__(self, service: WebhookService) -> None:
        self.service = service

    async def CreateWebhook(
        self, request: webhooks_pb2.CreateWebhookRequest, context: Context
    ) -> webhooks_pb2.CreateWebhookResponse:
        record, secret = await self.service.create(current_owner(), request.url, list(request.events), request.device_id)
        return webhooks_pb2.CreateWebhookResponse(webhook=webhook_to_pb(record), secret=secret)

    async def ListWebhooks(
        self, request: webhooks_pb2.ListWebhooksRequest, context: Context
    ) -> webhooks_pb2.ListWebhooksResponse:
        return webhooks_pb2.ListWebhooksResponse(webhooks=[webhook_to_pb(w) for w in await self.service.list(current_owner())])

    async def DeleteWebhook(
        self, request: webhooks_pb2.DeleteWebhookRequest, context: Context
    ) -> webhooks_pb2.DeleteWebhookResponse:
        await self.service.delete(current_owner(), require(request.id, "id"))
        return webhooks_pb2.DeleteWebhookResponse()

    async def TestWebhook(self, request: webhooks_pb2.TestWebhookRequest, context: Context) -> webhooks_pb2.WebhookAttempt:
        return attempt_to_pb(await self.service.test(current_owner(), require(request.id, "id")))

    async def ListWebhookDeliveries(
        self, request: webhooks_pb2.ListWebhookDeliveriesRequest, context: Context
    ) -> webhooks_pb2.ListWebhookDeliveriesResponse:
        require(request.webhook_id, "webhook_id")
        if request.state and request.state not in DeliveryState.__members__.values():
            raise InvalidArgument("state", "unknown delivery state")
        limit = page_limit(request.page_size)
        # Delivery ids are msg_ + a ULID; the token carries the ULID.
        before = _DELIVERY_PREFIX + decode_page_token(request.page_token) if request.page_token else None
        rows = await self.service.deliveries(
            current_owner(), request.webhook_id,
            state=DeliveryState(request.state) if request.state else None, limit=limit, before_id=before,
        )
        token = encode_page_token(rows[-1].id.removeprefix(_DELIVERY_PREFIX)) if len(rows) == limit else ""
        return webhooks_pb2.ListWebhookDeliveriesResponse(deliveries=[delivery_to_pb(d) for d in rows], next_page_token=token)

    async def ReplayWebhookDelivery(
        self, request: webhooks_pb2.ReplayWebhookDeliveryRequest, context: Context
    ) -> webhooks_pb2.WebhookDelivery:
        return delivery_to_pb(await self.service.replay(current_owner(), require(request.id, "id")))

    async def EnableWebhook(self, request: webhooks_pb2.EnableWebhookRequest, context: Context) -> webhooks_pb2.Webhook:
        return webhook_to_pb(await self.service.enable(current_owner(), require(request.id, "id")))

    async def RotateWebhookSecret(
        self, request: webhooks_pb2.RotateWebhookSecretRequest, context: Context
    ) -> webhooks_pb2.CreateWebhookResponse:
        record, secret = await self.service.rotate(current_owner(), require(request.id, "id"))
        return webhooks_pb2.CreateWebhookResponse(webhook=webhook_to_pb(record), secret=secret)
