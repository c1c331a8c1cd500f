"""The reference phone's inbound SMS: receive_sms forwards an Inbound, keeps it until the
bridge Acks it, and re-sends it (same phone id) after every reconnect until then; Acks can
be "lost" on purpose for tests; pairing with a private-mode server sends its token."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import trio

from device_bridge.protocol import InboundReceived, InboundSms, ReceiptReceived, ReceiptState
from smsgw_agent import PhoneAgent
from tests.unit.agent.test_agent_store import FakeBridge, Link, delivery, make_agent, quick_agent, settle, start_fake_bridge

SENDER = "+15550004242"
T = datetime(2030, 5, 6, 7, 8, 9, tzinfo=UTC)


def forwarded(link: Link) -> list[InboundSms]:
    """Inbound SMS the phone sent since the last call (receipts are skipped)."""
    found = []
    for frame in link.phone.frames_to_send():
        link.bridge.receive_frame(frame)
        for event in link.bridge.events_received():
            if isinstance(event, InboundReceived):
                found.append(event.inbound)
            else:
                assert isinstance(event, ReceiptReceived)
    return found


def ack(link: Link, event_ids: list[int]) -> None:
    link.bridge.send_ack(event_ids)
    link.pump_to_phone()


def test_receive_sms_is_forwarded_at_once_and_forgotten_after_the_ack() -> None:
    agent = make_agent()
    link = Link(agent)
    phone_id = agent.receive_sms(SENDER, "hi there", sim=1, received_at=T)
    [sms] = forwarded(link)
    assert (sms.id, sms.sender, sms.text, sms.sim_number, sms.received_at) == (phone_id, SENDER, "hi there", 1, T)
    assert agent.statistics().inbound == 1 and list(agent.inbound_unacked) == [sms.event_id]
    ack(link, [sms.event_id])
    assert agent.inbound_unacked == {} and agent.statistics().inbound_unacked == 0


def test_data_sms_and_the_phones_clock() -> None:
    agent = make_agent()
    link = Link(agent)
    agent.receive_sms(SENDER, data=b"\x01\x02", port=2948, sim=2)
    [sms] = forwarded(link)
    assert (sms.text, sms.data, sms.port, sms.sim_number) == (None, b"\x01\x02", 2948, 2)
    assert sms.received_at is not None and sms.received_at.tzinfo is UTC


def test_unacked_sms_are_resent_with_the_same_id_after_a_reconnect() -> None:
    agent = make_agent()
    first = Link(agent)
    a = agent.receive_sms(SENDER, "one")
    b = agent.receive_sms(SENDER, "two")
    sent = forwarded(first)
    ack(first, [sent[0].event_id])  # "one" is stored; the Ack of "two" is lost with the session
    first.close()
    c = agent.receive_sms(SENDER, "three")  # while offline: kept, sent after the next Welcome
    second = Link(agent)
    again = forwarded(second)
    assert [(s.id, s.text) for s in again] == [(b, "two"), (c, "three")]
    assert again[0] == sent[1]  # the very same event: same event id and phone id
    assert a not in {s.id for s in again}


@pytest.mark.trio
async def test_receipts_and_inbound_are_resent_in_event_id_order(autojump_clock: object) -> None:
    agent = make_agent(send_delay=1000.0)  # the SMS stays unsent: only ACCEPTED is made
    async with trio.open_nursery() as nursery:
        agent.use_nursery(nursery)
        first = Link(agent)
        agent.receive_sms(SENDER, "before")
        first.deliver(delivery("m1"))
        agent.receive_sms(SENDER, "after")
        first.close()
        second = Link(agent)
        order = []
        for frame in second.phone.frames_to_send():
            second.bridge.receive_frame(frame)
            for event in second.bridge.events_received():
                order.append(
                    ("inbound", event.inbound.event_id) if isinstance(event, InboundReceived) else ("receipt", event.receipt.event_id)
                )
        assert [kind for kind, _ in order] == ["inbound", "receipt", "inbound"]
        assert [e for _, e in order] == sorted(e for _, e in order)
        nursery.cancel_scope.cancel()


def test_ignore_acks_keeps_everything_for_the_next_session() -> None:
    agent = make_agent()
    link = Link(agent)
    agent.ignore_acks = True
    agent.receive_sms(SENDER, "lost ack")
    [sms] = forwarded(link)
    ack(link, [sms.event_id])
    assert list(agent.inbound_unacked) == [sms.event_id]
    link.close()
    agent.ignore_acks = False
    link = Link(agent)
    assert forwarded(link) == [sms]
    ack(link, [sms.event_id])
    assert agent.inbound_unacked == {}


def test_receive_sms_validates_like_the_protocol() -> None:
    agent = make_agent()
    with pytest.raises(ValueError, match="exactly one"):
        agent.receive_sms(SENDER)
    with pytest.raises(ValueError, match="Inbound.sender"):
        agent.receive_sms("", "x")
    assert agent.inbound_unacked == {} and agent.statistics().inbound == 0


@pytest.mark.trio
async def test_pairing_sends_the_private_token_and_bearer_sessions_do_not() -> None:
    bridge = FakeBridge()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await start_fake_bridge(nursery, bridge)
            agent: PhoneAgent = quick_agent(bridge, pairing_code="CODE-1", private_token="sesame")
            await nursery.start(agent.run)
            await agent.drop_session()
            await agent.wait_for(lambda a: a.sessions >= 2)
            assert bridge.authorizations == ["Pairing CODE-1", "Bearer tok-9"]
            assert bridge.private_tokens == ["sesame", ""]
            nursery.cancel_scope.cancel()
