"""The reference phone and Reject: a refused receipt or SMS leaves its queue for good (it is
never re-sent after a reconnect), is logged by event id and reason only, and an over-long SMS
is cut to the protocol's bound and flagged truncated rather than refused."""

from __future__ import annotations

import logging

import pytest
import trio

from device_bridge.protocol import Encoding, InboundReceived, ReceiptReceived, ReceiptState, RejectReason
from device_bridge.protocol.events import MAX_INBOUND_TEXT_CHARS
from tests.unit.agent.test_agent_store import Link, delivery, make_agent

SENDER = "+15550007777"
BODY = "SECRET BODY 0042"


def sent_ids(link: Link) -> list[int]:
    """Event ids of the receipts and SMS the phone sent since the last call."""
    ids = []
    for frame in link.phone.frames_to_send():
        link.bridge.receive_frame(frame)
        for event in link.bridge.events_received():
            assert isinstance(event, (ReceiptReceived, InboundReceived))
            ids.append(event.receipt.event_id if isinstance(event, ReceiptReceived) else event.inbound.event_id)
    return ids


@pytest.mark.trio
@pytest.mark.parametrize("encoding", [Encoding.PROTO, Encoding.JSON], ids=["proto", "json"])
async def test_refused_events_are_dropped_and_never_sent_again(
    encoding: Encoding, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    agent = make_agent()
    link = Link(agent, encoding=encoding)
    async with trio.open_nursery() as nursery:
        agent.use_nursery(nursery)
        link.bridge.send_deliver(delivery("m1"))
        link.pump_to_phone()  # ACCEPTED now; the modem would only start at the next checkpoint
        nursery.cancel_scope.cancel()
    agent.receive_sms(SENDER, BODY)
    agent.receive_sms(SENDER, "kept")
    [accepted, refused_sms, kept_sms] = sent_ids(link)
    assert agent.unacked[accepted].state is ReceiptState.ACCEPTED

    link.bridge.send_reject(accepted, RejectReason.UNKNOWN_MESSAGE, "no such message on this device")
    link.bridge.send_reject(refused_sms, RejectReason.INVALID_EVENT, "Inbound.sender must not be empty")
    link.bridge.send_reject(10_000, RejectReason.INVALID_EVENT, "an id the phone never used")  # ignored
    link.pump_to_phone()
    assert agent.unacked == {} and list(agent.inbound_unacked) == [kept_sms]
    assert {i: r.reason for i, r in agent.rejected.items()} == {
        accepted: RejectReason.UNKNOWN_MESSAGE,
        refused_sms: RejectReason.INVALID_EVENT,
    }
    assert agent.statistics().rejected == 2

    link.close()
    again = Link(agent, encoding=encoding)
    assert sent_ids(again) == [kept_sms]  # only the unanswered one goes out again
    assert BODY not in caplog.text and SENDER not in caplog.text
    assert f"event {refused_sms} refused by the bridge (INVALID_EVENT" in caplog.text


def test_an_over_long_sms_is_cut_to_the_bound_and_flagged() -> None:
    agent = make_agent()
    link = Link(agent)
    text = "y" * (MAX_INBOUND_TEXT_CHARS + 500)
    agent.receive_sms(SENDER, text)
    agent.receive_sms(SENDER, "short")
    events = []
    for frame in link.phone.frames_to_send():
        link.bridge.receive_frame(frame)
        events += link.bridge.events_received()
    [long, short] = [e.inbound for e in events]
    assert long.truncated and long.text == text[:MAX_INBOUND_TEXT_CHARS]
    assert not short.truncated and short.text == "short"
