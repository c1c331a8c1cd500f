"""Webhook payload records: the API's protobuf messages in their JSON mapping (field names
as in the .proto), so a webhook carries the same schema as the gRPC API."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

__all__ = ["proto_json"]


def proto_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)
