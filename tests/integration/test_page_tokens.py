"""Page tokens over the real API (issue 14, item 10): every List RPC refuses a token outside the
codec's alphabet with INVALID_ARGUMENT naming page_token (a Unicode letter or digit used to pass
`isalnum` / `int` and reach the query); the tokens the server writes still page."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smsgw.v1 import audit_pb2, audit_pb2_grpc, inbound_pb2, inbound_pb2_grpc, messages_pb2, messages_pb2_grpc
from smsgw.v1 import webhooks_pb2, webhooks_pb2_grpc

from tests.helpers.server import ServerProcess

_CROCKFORD = set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")


def _b64(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode()


@pytest.fixture(scope="module")
def calls(shared_server: ServerProcess) -> Iterator[dict[str, Callable[[str], Any]]]:
    """page_token -> the response (or grpc.RpcError) of each List RPC that takes one."""
    server = shared_server
    auth = [("authorization", f"Bearer {server.token}")]
    with grpc.insecure_channel(server.grpc_target) as channel:
        messages = messages_pb2_grpc.MessageServiceStub(channel)
        inbound = inbound_pb2_grpc.InboundServiceStub(channel)
        audit = audit_pb2_grpc.AuditServiceStub(channel)
        webhooks = webhooks_pb2_grpc.WebhookServiceStub(channel)
        yield {
            "ListMessages": lambda t: messages.ListMessages(
                messages_pb2.ListMessagesRequest(page_token=t), metadata=auth, timeout=10
            ),
            "ListInbound": lambda t: inbound.ListInbound(inbound_pb2.ListInboundRequest(page_token=t), metadata=auth, timeout=10),
            "ListAuditEvents": lambda t: audit.ListAuditEvents(
                audit_pb2.ListAuditEventsRequest(page_token=t), metadata=auth, timeout=10
            ),
            "ListWebhookDeliveries": lambda t: webhooks.ListWebhookDeliveries(
                webhooks_pb2.ListWebhookDeliveriesRequest(webhook_id="wh", page_token=t), metadata=auth, timeout=10
            ),
        }


def _assert_page_token_refused(call: Callable[[str], Any], token: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call(token)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (token, caught.value.details())
    status = rpc_status.from_call(caught.value)
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    assert [v.field for v in bad.field_violations] == ["page_token"]


ULID_RPCS = ("ListMessages", "ListInbound", "ListWebhookDeliveries")


@pytest.mark.parametrize("rpc", ULID_RPCS)
@pytest.mark.parametrize(
    "value",
    [
        "é" * 26,  # 26 Unicode letters: isalnum() said yes
        "ＡＢＣＤＥＦＧＨＪＫＭＮＰＱＲＳＴＶＷＸＹＺ０１２３",  # full-width
        "abcdefghjkmnpqrstvwxyz0123",  # lower case: not what the server writes
        "01J3E86PY0EV2XBZ5N0G6C4MIL",  # I and L are not Crockford
    ],
)
def test_ulid_tokens_outside_the_alphabet_are_refused(calls: dict[str, Callable[[str], Any]], rpc: str, value: str) -> None:
    _assert_page_token_refused(calls[rpc], _b64(value))


@pytest.mark.parametrize("value", ["١٢٣", "１２", " 12", "+12", "1_000", "012"])
def test_audit_tokens_outside_the_decimal_alphabet_are_refused(calls: dict[str, Callable[[str], Any]], value: str) -> None:
    _assert_page_token_refused(calls["ListAuditEvents"], _b64(value))


# 26 letters and digits of any script (what `isalnum` took), not all of them Crockford's.
_LOOKALIKE_ULIDS = st.text(st.characters(categories=["L", "Nd"]), min_size=26, max_size=26).filter(
    lambda v: not set(v) <= _CROCKFORD
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=_LOOKALIKE_ULIDS)
def test_any_value_outside_the_alphabet_is_invalid_argument_never_a_crash(
    calls: dict[str, Callable[[str], Any]], value: str
) -> None:
    for rpc in ULID_RPCS:
        _assert_page_token_refused(calls[rpc], _b64(value))
    _assert_page_token_refused(calls["ListMessages"], value)  # the raw text as a token


def test_the_servers_own_tokens_page_and_a_lower_case_copy_is_refused(
    shared_server: ServerProcess, calls: dict[str, Callable[[str], Any]]
) -> None:
    from smsgw_client import Client

    with Client(shared_server.grpc_target, shared_server.token) as client:
        for i in range(3):
            client.send_message(["+15551234567"], f"page {i}", idempotency_key=f"page-token-{i}")
        first = client.list_messages(page_size=2)
        assert first.next_page_token
        rest = client.list_messages(page_size=500, page_token=first.next_page_token)
        assert rest.messages and not {m.id for m in rest.messages} & {m.id for m in first.messages}
        audit = client.list_audit_events(page_size=1)
        assert audit.next_page_token
        assert client.list_audit_events(page_size=1, page_token=audit.next_page_token).events
    # The same cursor in lower case would compare differently in SQL: refused, not paged.
    lower = _b64(base64.urlsafe_b64decode(first.next_page_token).decode().lower())
    _assert_page_token_refused(calls["ListMessages"], lower)
