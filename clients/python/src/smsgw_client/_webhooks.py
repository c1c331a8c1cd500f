"""The WebhookService calls, as ``client.webhooks`` on :class:`Client` and :class:`AsyncClient`.

One class serves both: it builds each request and hands it to the client's unary call,
which returns the response (blocking client) or an awaitable of it (asyncio client)::

    created = client.webhooks.create("https://example.com/hook", ["sms:received"])
    created = await aclient.webhooks.create("https://example.com/hook", ["sms:received"])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from google.protobuf.message import Message
from smsgw.v1 import webhooks_pb2

__all__ = ["WebhookCalls", "EVENTS"]

R = TypeVar("R")

EVENTS = (
    "sms:received", "sms:data-received", "sms:sent", "sms:delivered", "sms:failed",
    "device:online", "device:offline", "device:push-token-invalid", "system:ping", "otp:approved", "otp:expired",
)


class WebhookCalls(Generic[R]):
    """Scopes: ``webhooks:write`` (create, test, replay, enable, rotate), ``webhooks:list``
    (list, deliveries), ``webhooks:delete`` (delete). Every method takes ``timeout``."""

    def __init__(self, call: Callable[[str, Message, float | None], R]) -> None:
        self._call = call

    def create(self, url: str, events: Sequence[str], *, device_id: str = "", timeout: float | None = None) -> R:
        """Register ``url`` for ``events`` (see :data:`EVENTS`) -> ``CreateWebhookResponse``
        with the ``whsec_`` secret, shown only here. ``device_id`` limits it to one phone."""
        request = webhooks_pb2.CreateWebhookRequest(url=url, events=list(events), device_id=device_id)
        return self._call("CreateWebhook", request, timeout)

    def list(self, *, timeout: float | None = None) -> R:
        """-> ``ListWebhooksResponse``: each webhook with its state and why it is failing or disabled."""
        return self._call("ListWebhooks", webhooks_pb2.ListWebhooksRequest(), timeout)

    def delete(self, webhook_id: str, *, timeout: float | None = None) -> R:
        """Delete it and its pending deliveries."""
        return self._call("DeleteWebhook", webhooks_pb2.DeleteWebhookRequest(id=webhook_id), timeout)

    def test(self, webhook_id: str, *, timeout: float | None = 30.0) -> R:
        """Send a ``system:ping`` now, once -> ``WebhookAttempt`` (status code, latency, error).
        The default deadline outlasts the server's 15 s attempt timeout."""
        return self._call("TestWebhook", webhooks_pb2.TestWebhookRequest(id=webhook_id), timeout)

    def deliveries(
        self, webhook_id: str, *, state: int = 0, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> R:
        """One page of its deliveries, newest first, with their attempts -> ``ListWebhookDeliveriesResponse``."""
        request = webhooks_pb2.ListWebhookDeliveriesRequest(
            webhook_id=webhook_id, state=state, page_size=page_size, page_token=page_token  # type: ignore[arg-type]
        )
        return self._call("ListWebhookDeliveries", request, timeout)

    def replay(self, delivery_id: str, *, timeout: float | None = None) -> R:
        """Send a finished delivery again, same webhook-id -> ``WebhookDelivery``."""
        return self._call("ReplayWebhookDelivery", webhooks_pb2.ReplayWebhookDeliveryRequest(id=delivery_id), timeout)

    def enable(self, webhook_id: str, *, timeout: float | None = None) -> R:
        """Re-enable a disabled or failing webhook -> ``Webhook``."""
        return self._call("EnableWebhook", webhooks_pb2.EnableWebhookRequest(id=webhook_id), timeout)

    def rotate_secret(self, webhook_id: str, *, timeout: float | None = None) -> R:
        """A new secret -> ``CreateWebhookResponse``; the old one keeps signing for the server's overlap."""
        return self._call("RotateWebhookSecret", webhooks_pb2.RotateWebhookSecretRequest(id=webhook_id), timeout)
