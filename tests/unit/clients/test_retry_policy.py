"""The client's service config retries unary calls only: a server stream re-opened by gRPC's
transparent retry would bypass the watch's own resume from its last event id."""

from __future__ import annotations

import json

from smsgw.v1 import audit_pb2, devices_pb2, inbound_pb2, messages_pb2
from smsgw_client import _channel

_FILES = (messages_pb2, devices_pb2, audit_pb2, inbound_pb2)


def _methods() -> dict[str, dict[str, bool]]:
    """Every method of the retried services: name -> is a stream (either direction)."""
    out: dict[str, dict[str, bool]] = {}
    for module in _FILES:
        for service in module.DESCRIPTOR.services_by_name.values():
            out[service.full_name] = {m.name: m.server_streaming or m.client_streaming for m in service.methods}
    return out


def test_the_retry_policy_names_every_unary_method_and_no_stream() -> None:
    config = json.loads(dict(_channel.DEFAULT_OPTIONS)["grpc.service_config"])
    (policy,) = config["methodConfig"]
    named = {(n["service"], n.get("method")) for n in policy["name"]}
    methods = _methods()
    assert all(method is not None for _, method in named)  # a bare service would cover its streams
    unary = {(s, m) for s in _channel.RETRIED_SERVICES for m, streaming in methods[s].items() if not streaming}
    assert named == unary
    assert ("smsgw.v1.MessageService", "WatchMessages") not in named
    assert ("smsgw.v1.InboundService", "WatchInbound") not in named
