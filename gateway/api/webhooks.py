"""smsgw.v1.WebhookService: register endpoints, test them, read their deliveries."""

from __future__ import annotations

import base64
from typing import Any

import grpc
from smsgw.v1 import webhooks_pb2, webhooks_pb2_grpc

from gateway.api.convert import attempt_to_pb, delivery_to_pb, webhook_to_pb
from gateway.api.interceptors import current_owner
from gateway.errors import InvalidArgument
from gateway.webhooks.records import DeliveryState
from gateway.webhooks.service import WebhookService

__all__ = ["WebhookServicer"]

Context = grpc.aio.ServicerContext[Any, Any]

_DEFAULT_PAGE, _MAX_PAGE = 50, 500
_DELIVERY_ID_LENGTH = len("msg_") + 26


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
        await self.service.delete(current_owner(), _require(request.id, "id"))
        return webhooks_pb2.DeleteWebhookResponse()

    async def TestWebhook(self, request: webhooks_pb2.TestWebhookRequest, context: Context) -> webhooks_pb2.WebhookAttempt:
        return attempt_to_pb(await self.service.test(current_owner(), _require(request.id, "id")))

    async def ListWebhookDeliveries(
        self, request: webhooks_pb2.ListWebhookDeliveriesRequest, context: Context
    ) -> webhooks_pb2.ListWebhookDeliveriesResponse:
        bad: list[tuple[str, str]] = []
        if not request.webhook_id:
            bad.append(("webhook_id", "required"))
        if request.state and request.state not in DeliveryState.__members__.values():
            bad.append(("state", "unknown delivery state"))
        if request.page_size > _MAX_PAGE:
            bad.append(("page_size", f"at most {_MAX_PAGE}"))
        before = _decode_token(request.page_token, bad) if request.page_token else None
        InvalidArgument.raise_if_any(bad)
        limit = request.page_size or _DEFAULT_PAGE
        rows = await self.service.deliveries(
            current_owner(), request.webhook_id,
            state=DeliveryState(request.state) if request.state else None, limit=limit, before_id=before,
        )
        token = _encode_token(rows[-1].id) if len(rows) == limit else ""
        return webhooks_pb2.ListWebhookDeliveriesResponse(deliveries=[delivery_to_pb(d) for d in rows], next_page_token=token)

    async def ReplayWebhookDelivery(
        self, request: webhooks_pb2.ReplayWebhookDeliveryRequest, context: Context
    ) -> webhooks_pb2.WebhookDelivery:
        return delivery_to_pb(await self.service.replay(current_owner(), _require(request.id, "id")))

    async def EnableWebhook(self, request: webhooks_pb2.EnableWebhookRequest, context: Context) -> webhooks_pb2.Webhook:
        return webhook_to_pb(await self.service.enable(current_owner(), _require(request.id, "id")))

    async def RotateWebhookSecret(
        self, request: webhooks_pb2.RotateWebhookSecretRequest, context: Context
    ) -> webhooks_pb2.CreateWebhookResponse:
        record, secret = await self.service.rotate(current_owner(), _require(request.id, "id"))
        return webhooks_pb2.CreateWebhookResponse(webhook=webhook_to_pb(record), secret=secret)


def _require(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument(field, "required")
    return value


def _encode_token(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode()


def _decode_token(token: str, bad: list[tuple[str, str]]) -> str | None:
    try:
        value = base64.urlsafe_b64decode(token.encode()).decode()
    except ValueError:
        value = ""
    if len(value) != _DELIVERY_ID_LENGTH or not value.startswith("msg_") or not value[4:].isalnum():
        bad.append(("page_token", "not a token from next_page_token"))
        return None
    return value
