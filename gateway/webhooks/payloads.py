"""Webhook payload records: the API's protobuf messages in their JSON mapping (field names
as in the .proto), so a webhook carries the same schema as the gRPC API."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from gateway.api.convert import message_to_pb
from gateway.messages.records import MessageRecord
from gateway.types import State
from gateway.webhooks.records import WebhookEvent

__all__ = ["proto_json", "MESSAGE_EVENTS", "message_body", "device_body"]

# The recipient states a webhook hears of. EXPIRED is a failure to send as far as the
# client is concerned; its payload's state says which.
MESSAGE_EVENTS = {
    State.SENT: WebhookEvent.SMS_SENT,
    State.DELIVERED: WebhookEvent.SMS_DELIVERED,
    State.FAILED: WebhookEvent.SMS_FAILED,
    State.EXPIRED: WebhookEvent.SMS_FAILED,
}


def proto_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def message_body(record: MessageRecord, recipient_index: int) -> dict[str, Any]:
    """The recipient that changed, and the whole message as GetMessage returns it."""
    r = next(x for x in record.recipients if x.index == recipient_index)
    return {
        "recipient_index": recipient_index,
        "phone_number": r.phone_number,
        "state": State(r.state).name,
        "error": r.error,
        "message": proto_json(message_to_pb(record)),
    }


def device_body(device_id: str, name: str, online: bool) -> dict[str, Any]:
    return {"device": {"id": device_id, "name": name, "online": online}}
