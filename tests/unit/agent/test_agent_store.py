"""The phone's store logic, driven without sockets.

A :class:`Link` joins the agent's PHONE ``DeviceSession`` to a BRIDGE
``DeviceSession``: frames the bridge queues are fed to the phone and its
events to :meth:`PhoneAgent.handle_event`; frames the agent queues are fed to
the bridge, which reports the receipts. Modem delays run on trio's autojump
clock (``MockClock(autojump_threshold=0)``), so nothing waits for real and
times are exact.

The store is keyed by (message_id, recipient_index, attempt): Delivers for a
subset of a message's recipients, retries with attempt + 1, multipart
progress (parts_done), failure classes, the Android per-app limit dialog,
Drop of not-started recipients, Hello ``held`` and the pacing settings.

The last section runs the agent's I/O loop (``run``) against a tiny
in-process websockets.trio bridge on 127.0.0.1, to check the connect loop's
decisions (Pairing then Bearer, stop on 4003 / 401, reconnect after
``drop_session``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone

import pytest
import trio
import trio.testing

from device_bridge.protocol import (
    PRIVATE_TOKEN_HEADER,
    AckReceived,
    Credentials,
    Delivery,
    DeviceSession,
    Encoding,
    FailureClass,
    HeldRecipient,
    HelloReceived,
    PacingSettings,
    Receipt,
    ReceiptReceived,
    ReceiptState,
    Side,
    SimInfo,
    SimPacing,
)
from smsgw_agent import Backoff, ModemOptions, PhoneAgent, RecipientKey, SimulatedModem

ACCEPTED, SENT, DELIVERED, FAILED = (
    ReceiptState.ACCEPTED,
    ReceiptState.SENT,
    ReceiptState.DELIVERED,
    ReceiptState.FAILED,
)
NUMBERS = ("+15550000001", "+15550000002")


def make_agent(*, sims: tuple[SimInfo, ...] = (SimInfo(1),), **modem: object) -> PhoneAgent:
    options = ModemOptions(**{"send_delay": 0.05, "delivery_delay": 0.05, "seed": 1, **modem})  # type: ignore[arg-type]
    return PhoneAgent("ws://127.0.0.1:1/device/v1", token="t", modem=SimulatedModem(options), window=4, sims=sims)


def delivery(
    message_id: str,
    *,
    numbers: tuple[str, ...] = NUMBERS,
    report: bool = True,
    indices: tuple[int, ...] = (),
    attempt: int = 1,
    parts: int = 0,
    sim: int = 0,
) -> Delivery:
    return Delivery(
        message_id, numbers, text="hello", with_delivery_report=report,
        recipient_indices=indices, attempt=attempt, parts=parts, sim_number=sim,
    )


def key(message_id: str, index: int, attempt: int = 1) -> RecipientKey:
    return RecipientKey(message_id, index, attempt)


class Link:
    """One session between the agent and a sans-I/O bridge."""

    def __init__(
        self,
        agent: PhoneAgent,
        *,
        encoding: Encoding = Encoding.PROTO,
        credentials: Credentials | None = None,
        settings: PacingSettings | None = None,
    ):
        self.agent = agent
        self.phone = DeviceSession(Side.PHONE, encoding, window=agent.window)
        self.bridge = DeviceSession(Side.BRIDGE, encoding)
        agent.send_hello(self.phone)
        agent.attach_session(self.phone)
        for frame in self.phone.frames_to_send():
            self.bridge.receive_frame(frame)
        (hello,) = self.bridge.events_received()
        assert isinstance(hello, HelloReceived)
        self.hello = hello
        self.bridge.send_welcome(
            "dev-1", ping_interval=20, server_time=datetime.now(timezone.utc), credentials=credentials, settings=settings
        )
        self.pump_to_phone()

    def pump_to_phone(self) -> None:
        for frame in self.bridge.frames_to_send():
            self.phone.receive_frame(frame)
            for event in self.phone.events_received():
                self.agent.handle_event(event)

    def receipts(self) -> list[Receipt]:
        """Receipts the phone sent since the last call (frames fed to the bridge)."""
        result = []
        for frame in self.phone.frames_to_send():
            self.bridge.receive_frame(frame)
            for event in self.bridge.events_received():
                assert isinstance(event, ReceiptReceived)
                result.append(event.receipt)
        return result

    def deliver(self, *deliveries: Delivery) -> None:
        for d in deliveries:
            self.bridge.send_deliver(d)
        self.pump_to_phone()

    def ack(self, receipts: list[Receipt]) -> None:
        self.bridge.send_ack([r.event_id for r in receipts])
        self.pump_to_phone()

    def close(self) -> None:
        self.bridge.receive_closed()
        self.agent.detach_session()


def states(receipts: list[Receipt]) -> list[tuple[str, ReceiptState, int]]:
    return [(r.message_id, r.state, r.recipient_index) for r in receipts]


def progress(receipts: list[Receipt], state: ReceiptState) -> list[tuple[int, int, int]]:
    """(recipient_index, attempt, parts_done) of the receipts in ``state``, in order."""
    return [(r.recipient_index, r.attempt, r.parts_done) for r in receipts if r.state == state]


async def settle(agent: PhoneAgent, predicate: Callable[[PhoneAgent], bool]) -> None:
    with trio.fail_after(60):  # virtual seconds (autojump clock)
        await agent.wait_for(predicate)
    await trio.testing.wait_all_tasks_blocked()


def finished(agent: PhoneAgent) -> bool:
    return agent.statistics().sending == 0


# --- Deliver -> ACCEPTED -> SENT -> DELIVERED ---------------------------------


@pytest.mark.trio
@pytest.mark.parametrize("encoding", [Encoding.PROTO, Encoding.JSON])
async def test_a_message_is_accepted_sent_and_delivered_per_recipient(autojump_clock: object, encoding: Encoding) -> None:
    agent = make_agent()
    async with trio.open_nursery() as nursery:
        agent.use_nursery(nursery)
        link = Link(agent, encoding=encoding)
        assert agent.connected and agent.sessions == 1 and agent.device_id == "dev-1"
        link.deliver(delivery("m1"))
        first = link.receipts()
        assert states(first) == [("m1", ACCEPTED, 0)]
        assert first[0].recipient_indices == (0, 1) and first[0].attempt == 1
        assert agent.held_unacked_ids() == ["m1"]
        await settle(agent, lambda a: a.statistics().delivered == 2)
        rest = link.receipts()
        assert sorted(states(rest)) == sorted(
            [("m1", SENT, 0), ("m1", SENT, 1), ("m1", DELIVERED, 0), ("m1", DELIVERED, 1)]
        )
        assert [r.event_id for r in first + rest] == [1, 2, 3, 4, 5]
        assert all(r.time is not None for r in first + rest)
        assert all(r.attempt == 1 and r.parts_done == 1 for r in rest)  # one part each (parts 0 = 1)
        assert agent.modem.sent == [("m1", 0), ("m1", 1)]
        assert agent.received == ["m1"] and agent.accepted == {key("m1", 0), key("m1", 1)}
        assert set(agent.held) == {key("m1", 0), key("m1", 1)} and agent.held_message_ids() == ["m1"]
        assert [(p.sim, p.message_id, p.recipient_index, p.attempt, p.part) for p in agent.modem.parts_log] == [
            (1, "m1", 0, 1, 1), (1, "m1", 1, 1, 1)
        ]
        stats = agent.statistics()
        assert (stats.accepted, stats.held, stats.sent, stats.delivered, stats.parts_sent) == (2, 2, 2, 2, 2)
        link.ack(first + rest)
        assert agent.unacked == {} and agent.held_unacked_ids() == []


@pytest.mark.trio
async def test_failed_sends_report_failed_and_no_delivery(autojump_clock: object) -> None:
    agent = make_agent(failure_rate=1.0)
    async with trio.open_nursery() as nursery:
        agent.use_nursery(nursery)
        link = Link(agent)
        link.deliver(delivery("m1"))
        await settle(agent, finished)
        got = link.receipts()
        assert states(got) == [("m1", ACCEPTED, 0), ("m1", FAILED, 0), ("m1", FAILED, 1)]
        assert {r.error for r in got[1:]} == {"generic_failure"}
        assert {r.failure_class for r in got[1:]} == {FailureClass.GENERIC_FAILURE}
        assert {(r.attempt, r.parts_done) for r in got[1:]} == {(1, 0)}
        assert agent.statistics().delivered == 0 and agent.statistics().failed == 2
        assert agent.modem.failed == [("m1", 0), ("m1", 1)] and agent.modem.parts_log == []


@pytest.mark.trio
async def test_no_delivery_report_unless_asked_and_supported(autojump_clock: object) -> None:
    for agent, report in ((make_agent(), False), (make_agent(delivery_reports=False), True)):
        async with trio.open_nursery() as nursery:
            agent.use_nursery(nursery)
            link = Link(agent)
            link.deliver(delivery("m1", report=report))
            await settle(agent, finished)
            await trio.sleep(1)
            assert {r.state for r in link.receipts()} == {ACCEPTED, SENT}


# --- duplicates ---------------------------------------------------------------


@pytest.mark.trio
async def test_duplicate_deliver_on_the_same_session_resends_unacked_receipts_only(autojump_clock: object) -> None:
    agent = make_agent()
    async with trio.open_nursery() as nursery:
        agent.use_nursery(nursery)
        link = Link(agent)
        link.deliver(delivery("m1"))
        accepted = link.receipts()
        # The bridge "re-sends" while the ACCEPTED is unacknowledged: its
        # in-flight set no longer holds m1, so it may Deliver it again.
        link.deliver(delivery("m1"))
        again = link.receipts()
        assert [r.event_id for r in again] == [accepted[0].event_id]
        assert agent.held_recipients() == [HeldRecipient("m1", 0, 1), HeldRecipient("m1", 1, 1)]
        await settle(agent, finished)
        assert agent.modem.sent == [("m1", 0), ("m1", 1)]
        assert agent.received == ["m1", "m1"]
        assert agent.statistics().duplicates == 1


@pytest.mark.trio
async def test_duplicate_after_reconnect_with_everything_acked_gets_a_fresh_accepted(autojump_clock: object) -> None:
    agent = make_agent()
    async with trio.open_nursery() as nursery:
        agent.use_nursery(nursery)
        link = Link(agent)
        link.deliver(delivery("m1"))
        await settle(agent, lambda a: a.statistics().delivered == 2)
        link.ack(link.receipts())
        assert agent.unacked == {}
        link.close()

        link2 = Link(agent)
        assert link2.hello.held_message_ids == ()
        assert link2.receipts() == []  # nothing left to re-send
        link2.deliver(delivery("m1"))  # a fresh session: the protocol does not flag it
        fresh = link2.receipts()
        assert states(fresh) == [("m1", ACCEPTED, 0)]
        assert fresh[0].recipient_indices == (0, 1) and fresh[0].attempt == 1
        assert fresh[0].event_id == 6  # a new event id, never reused
        await trio.sleep(1)
        assert agent.modem.sent == [("m1", 0), ("m1", 1)]  # sent exactly once


@pytest.mark.trio
async def test_duplicate_after_reconnect_resends_only_that_messages_unacked_receipts(autojump_clock: object) -> None:
    agent = make_agent()
    async with trio.open_nursery() as nursery:
        agent.use_nursery(nursery)
        link = Link(agent)
        link.deliver(delivery("m1"), delivery("m2"))
        await settle(agent, finished)
        got = link.receipts()
        link.ack([r for r in got if r.message_id == "m2"])  # m1's receipts are lost
        link.close()

        link2 = Link(agent)
        assert link2.hello.held_message_ids == ("m1",)
        assert link2.hello.held == (HeldRecipient("m1", 0, 1), HeldRecipient("m1", 1, 1))
        resent = link2.receipts()  # right after Welcome: every unacked receipt, in order
        m1_ids = [r.event_id for r in got if r.message_id == "m1"]
        assert [r.event_id for r in resent] == m1_ids
        link2.deliver(delivery("m1"))
        assert [r.event_id for r in link2.receipts()] == m1_ids
        await trio.sleep(1)
        assert sorted(agent.modem.sent) == [("m1", 0), ("m1", 1), ("m2", 0), ("m2", 1)]


# --- receipts made while offline; Acks ------------------------------------------


@pytest.mark.trio
async def test_receipts_made_between_sessions_go_out_in_order_after_the_next_welcome(autojump_clock: object) -> None:
    agent = make_agent()
    async with trio.open_nursery() as nursery:
        agent.use_nursery(nursery)
        link = Link(agent)
        link.deliver(delivery("m1"), delivery("m2", numbers=NUMBERS[:1]))
        accepted = link.receipts()
        assert states(accepted) == [("m1", ACCEPTED, 0), ("m2", ACCEPTED, 0)]
        link.close()  # the session drops; sending goes on
        assert not agent.connected
        await settle(agent, lambda a: a.statistics().delivered == 3)
        assert link.phone.frames_to_send() == []  # nothing went to the dead session

        link2 = Link(agent)
        assert set(link2.hello.held_message_ids) == {"m1", "m2"}
        resent = link2.receipts()
        assert [r.event_id for r in resent] == sorted(agent.unacked) == list(range(1, 9))
        assert {r.state for r in resent[2:]} == {SENT, DELIVERED}
        link2.ack(resent[:5])
        assert sorted(agent.unacked) == [6, 7, 8]
        link2.close()

        link3 = Link(agent)
        assert [r.event_id for r in link3.receipts()] == [6, 7, 8]
        assert link3.hello.held_message_ids == ()
        link3.ack([agent.unacked[6], agent.unacked[7], agent.unacked[8]])
        assert agent.unacked == {}
        assert agent.sessions == 3


@pytest.mark.trio
async def test_acks_for_unknown_event_ids_are_ignored(autojump_clock: object) -> None:
    agent = make_agent()
    link = Link(agent)
    agent.handle_event(AckReceived((41, 42)))
    assert agent.unacked == {}
    assert link.receipts() == []


# --- Drop ---------------------------------------------------------------------


@pytest.mark.trio
async def test_drop_before_sending_starts_means_never_sent(autojump_clock: object) -> None:
    agent = make_agent()
    async with trio.open_nursery() as nursery:
        agent.use_nursery(nursery)
        link = Link(agent)
        # Deliver and Drop arrive in one go, before the send task got to run.
        link.bridge.send_deliver(delivery("m1"))
        link.bridge.send_drop("m1", "cancelled")
        link.pump_to_phone()
        await trio.sleep(5)
        assert states(link.receipts()) == [("m1", ACCEPTED, 0)]  # and nothing for the Drop
        assert agent.modem.sent == []
        assert agent.held == {} and agent.held_message_ids() == []
        assert agent.statistics().dropped == 2  # both recipients
        assert agent.held_unacked_ids() == [] and agent.held_recipients() == []


@pytest.mark.trio
async def test_drop_after_sending_started_stops_only_the_recipients_not_started(autojump_clock: object) -> None:
    agent = make_agent()
    three = ("+15550000001", "+15550000002", "+15550000003")
    async with trio.open_nursery() as nursery:
        agent.use_nursery(nursery)
        link = Link(agent)
        link.deliver(delivery("m1", numbers=three), delivery("m2", numbers=NUMBERS[:1]))
        await trio.testing.wait_all_tasks_blocked()  # the modem is busy with m1's recipient 0
        assert sorted(agent.modem.sent) == [("m1", 0), ("m2", 0)]
        link.bridge.send_drop("m1", "expired")
        link.pump_to_phone()
        await settle(agent, finished)
        await trio.sleep(1)
        assert sorted(agent.modem.sent) == [("m1", 0), ("m2", 0)]  # recipient 0 was too late to stop; 1 and 2 never go
        assert agent.statistics().dropped == 2
        assert set(agent.held) == {key("m1", 0), key("m2", 0)}
        got = link.receipts()
        assert sorted(states(got)) == sorted([
            ("m1", ACCEPTED, 0), ("m2", ACCEPTED, 0),
            ("m1", SENT, 0), ("m1", DELIVERED, 0), ("m2", SENT, 0), ("m2", DELIVERED, 0),
        ])
        # A later Drop of a message whose sending is over changes nothing.
        link.bridge.send_drop("m2", "expired")
        link.pump_to_phone()
        assert agent.statistics().dropped == 2 and key("m2", 0) in agent.held


# --- pause_accepting (a phone dying between receiving and accepting) -------------


@pytest.mark.trio
async def test_parked_delivers_are_not_accepted_and_are_forgotten_with_the_session(autojump_clock: object) -> None:
    agent = make_agent()
    async with trio.open_nursery() as nursery:
        agent.use_nursery(nursery)
        agent.pause_accepting = True
        link = Link(agent)
        link.deliver(delivery("m1"), delivery("m2"))
        assert list(agent.parked) == ["m1", "m2"]
        assert link.receipts() == [] and agent.accepted == set() and agent.statistics().parked == 2
        assert link.bridge.window_available == 2  # both still in flight
        link.bridge.send_drop("m2")
        link.pump_to_phone()
        assert list(agent.parked) == ["m1"]
        link.close()
        assert agent.parked == {}

        agent.pause_accepting = False
        link2 = Link(agent)
        assert link2.hello.held_message_ids == ()
        link2.deliver(delivery("m1"))
        assert states(link2.receipts()) == [("m1", ACCEPTED, 0)]
        await settle(agent, finished)
        assert agent.modem.sent == [("m1", 0), ("m1", 1)]
        assert agent.received == ["m1", "m2", "m1"]


@pytest.mark.trio
async def test_accept_parked_accepts_them_now(autojump_clock: object) -> None:
    agent = make_agent()
    async with trio.open_nursery() as nursery:
        agent.use_nursery(nursery)
        agent.pause_accepting = True
        link = Link(agent)
        link.deliver(delivery("m1"))
        agent.pause_accepting = False
        agent.accept_parked()
        assert states(link.receipts()) == [("m1", ACCEPTED, 0)]
        await settle(agent, finished)
        assert agent.modem.sent == [("m1", 0), ("m1", 1)]


# --- the dispatch scheduler's model: per recipient, per attempt, per part -------------


@pytest.mark.trio
async def test_a_message_may_come_in_per_recipient_delivers(autojump_clock: object) -> None:
    agent = make_agent()
    async with trio.open_nursery() as nursery:
        agent.use_nursery(nursery)
        link = Link(agent)
        # Recipient 1 first (phone_numbers[0] is recipient 1), then recipient 0.
        link.deliver(delivery("m1", numbers=NUMBERS[1:], indices=(1,)))
        first = link.receipts()
        assert states(first) == [("m1", ACCEPTED, 0)] and first[0].recipient_indices == (1,)
        await settle(agent, lambda a: a.statistics().delivered == 1)
        assert progress(link.receipts(), SENT) == [(1, 1, 1)]
        link.deliver(delivery("m1", numbers=NUMBERS[:1], indices=(0,)))
        second = link.receipts()
        assert states(second) == [("m1", ACCEPTED, 0)] and second[0].recipient_indices == (0,)
        await settle(agent, lambda a: a.statistics().delivered == 2)
        rest = link.receipts()
        assert progress(rest, SENT) == [(0, 1, 1)] and progress(rest, DELIVERED) == [(0, 1, 1)]
        assert agent.modem.sent == [("m1", 1), ("m1", 0)]
        assert agent.received == ["m1", "m1"] and agent.statistics().duplicates == 0
        assert set(agent.held) == {key("m1", 0), key("m1", 1)} and agent.held_message_ids() == ["m1"]


@pytest.mark.trio
async def test_a_deliver_with_held_and_new_recipients_sends_only_the_new_ones(autojump_clock: object) -> None:
    agent = make_agent()
    async with trio.open_nursery() as nursery:
        agent.use_nursery(nursery)
        link = Link(agent)
        link.deliver(delivery("m1", numbers=NUMBERS[:1], indices=(0,)))
        await settle(agent, lambda a: a.statistics().delivered == 1)
        link.ack(link.receipts())
        link.deliver(delivery("m1"))  # recipients 0 (held, everything acked) and 1 (new)
        got = link.receipts()
        assert states(got) == [("m1", ACCEPTED, 0)] and got[0].recipient_indices == (0, 1)
        await settle(agent, finished)
        assert agent.modem.sent == [("m1", 0), ("m1", 1)]
        assert agent.statistics().duplicates == 1


@pytest.mark.trio
async def test_a_retry_with_attempt_2_is_sent_again_but_a_duplicate_of_attempt_1_is_not(
    autojump_clock: object,
) -> None:
    agent = make_agent()
    agent.modem.fail_next(FailureClass.NO_SERVICE)
    async with trio.open_nursery() as nursery:
        agent.use_nursery(nursery)
        link = Link(agent)
        link.deliver(delivery("m1", numbers=NUMBERS[:1]))
        await settle(agent, finished)
        got = link.receipts()
        assert states(got) == [("m1", ACCEPTED, 0), ("m1", FAILED, 0)]
        failed = got[1]
        assert (failed.attempt, failed.failure_class, failed.parts_done, failed.error) == (
            1, FailureClass.NO_SERVICE, 0, "no_service"
        )
        # The bridge re-sends attempt 1 (its receipts unacknowledged): nothing is sent again.
        link.deliver(delivery("m1", numbers=NUMBERS[:1]))
        assert [r.event_id for r in link.receipts()] == [r.event_id for r in got]
        link.ack(got)
        link.deliver(delivery("m1", numbers=NUMBERS[:1]))  # and again, everything acked: a fresh ACCEPTED
        again = link.receipts()
        assert [(r.state, r.attempt, r.recipient_indices) for r in again] == [(ACCEPTED, 1, (0,))]
        link.ack(again)
        await trio.sleep(1)
        assert agent.modem.sent == [("m1", 0)] and agent.statistics().duplicates == 2
        # The retry: attempt 2 of the same recipient is a new key and goes out.
        link.deliver(delivery("m1", numbers=NUMBERS[:1], attempt=2))
        accepted = link.receipts()
        assert [(r.state, r.attempt, r.recipient_indices) for r in accepted] == [(ACCEPTED, 2, (0,))]
        await settle(agent, lambda a: a.statistics().delivered == 1)
        rest = link.receipts()
        assert progress(rest, SENT) == [(0, 2, 1)] and progress(rest, DELIVERED) == [(0, 2, 1)]
        assert agent.modem.sent == [("m1", 0), ("m1", 0)]
        assert [(p.attempt, p.part) for p in agent.modem.parts_log] == [(2, 1)]  # attempt 1 sent no part
        assert set(agent.held) == {key("m1", 0, 1), key("m1", 0, 2)}
        assert agent.held_recipients() == [HeldRecipient("m1", 0, 2)]  # its ACCEPTED is not acknowledged
        link.ack(accepted + rest)
        assert agent.held_recipients() == []  # both finished, every ACCEPTED acknowledged


@pytest.mark.trio
async def test_multipart_reports_sent_and_delivered_per_part(autojump_clock: object) -> None:
    agent = make_agent()
    async with trio.open_nursery() as nursery:
        agent.use_nursery(nursery)
        link = Link(agent)
        start = trio.current_time()
        link.deliver(delivery("m1", numbers=NUMBERS[:1], parts=3))
        await trio.testing.wait_all_tasks_blocked()
        assert agent.recipient_progress("m1", 0) == (0, 0)
        await trio.sleep(0.05)  # part 1's sent-callback
        await trio.testing.wait_all_tasks_blocked()
        assert agent.recipient_progress("m1", 0) == (1, 0)
        assert agent.statistics().sent == 0  # a recipient counts as sent once every part is
        await settle(agent, lambda a: a.statistics().delivered == 1)
        got = link.receipts()
        assert progress(got, SENT) == [(0, 1, 1), (0, 1, 2), (0, 1, 3)]
        assert progress(got, DELIVERED) == [(0, 1, 1), (0, 1, 2), (0, 1, 3)]
        assert [(p.part, p.parts, round(p.time - start, 6)) for p in agent.modem.parts_log] == [
            (1, 3, 0.05), (2, 3, 0.1), (3, 3, 0.15)
        ]
        assert agent.modem.sent == [("m1", 0)]  # one send of the recipient, not one per part
        stats = agent.statistics()
        assert (stats.sent, stats.parts_sent, stats.delivered, stats.parts_delivered) == (1, 3, 1, 3)


@pytest.mark.trio
async def test_a_failure_after_a_part_went_out_reports_its_class_and_parts_done(autojump_clock: object) -> None:
    # Delivery reports come late, after the failure: the part sent before it gets none.
    agent = make_agent(delivery_delay=5.0)
    agent.modem.fail_next(FailureClass.RADIO_OFF, after_parts=1)
    async with trio.open_nursery() as nursery:
        agent.use_nursery(nursery)
        link = Link(agent)
        link.deliver(delivery("m1", numbers=NUMBERS[:1], parts=3))
        await settle(agent, finished)
        await trio.sleep(10)
        got = link.receipts()
        assert [r.state for r in got] == [ACCEPTED, SENT, FAILED]
        assert got[1].parts_done == 1
        assert (got[2].failure_class, got[2].parts_done, got[2].attempt, got[2].error) == (
            FailureClass.RADIO_OFF, 1, 1, "radio_off"
        )
        assert [p.part for p in agent.modem.parts_log] == [1]
        assert agent.modem.failed == [("m1", 0)] and agent.modem.pending_failures == 0
        assert agent.statistics().failed == 1 and agent.statistics().delivered == 0


@pytest.mark.trio
async def test_fail_next_for_one_number_and_count(autojump_clock: object) -> None:
    agent = make_agent()
    agent.modem.fail_next(FailureClass.INVALID_NUMBER, 2, phone_number=NUMBERS[1])
    async with trio.open_nursery() as nursery:
        agent.use_nursery(nursery)
        link = Link(agent)
        link.deliver(delivery("m1"), delivery("m2"), delivery("m3"))
        await settle(agent, finished)
        got = link.receipts()
        # The three messages send concurrently: two of their recipients 1 fail, whichever go first.
        failed = [(r.message_id, r.recipient_index, r.failure_class) for r in got if r.state == FAILED]
        assert len(failed) == 2 and {(i, c) for _, i, c in failed} == {(1, FailureClass.INVALID_NUMBER)}
        sent = {(r.message_id, r.recipient_index) for r in got if r.state == SENT}
        assert sent == {("m1", 0), ("m2", 0), ("m3", 0), ("m1", 1), ("m2", 1), ("m3", 1)} - {f[:2] for f in failed}
        assert agent.modem.pending_failures == 0


@pytest.mark.trio
async def test_failure_rate_fails_with_the_configured_class(autojump_clock: object) -> None:
    agent = make_agent(failure_rate=1.0, failure_class=FailureClass.NO_SERVICE)
    async with trio.open_nursery() as nursery:
        agent.use_nursery(nursery)
        link = Link(agent)
        link.deliver(delivery("m1", parts=2))
        await settle(agent, finished)
        got = [r for r in link.receipts() if r.state == FAILED]
        assert [(r.failure_class, r.parts_done, r.error) for r in got] == [(FailureClass.NO_SERVICE, 0, "no_service")] * 2


@pytest.mark.trio
async def test_android_limit_dialog_then_sends_again_after_the_window(autojump_clock: object) -> None:
    agent = make_agent(send_delay=0.1, delivery_reports=False)
    many = tuple(f"+1555000{i:04d}" for i in range(30))
    async with trio.open_nursery() as nursery:
        agent.use_nursery(nursery)
        link = Link(agent)
        start = trio.current_time()
        link.deliver(delivery("m1", numbers=many))  # 30 single-part recipients: the whole limit
        await settle(agent, finished)
        assert len(agent.modem.parts_log) == 30 and agent.modem.dialogs == []
        link.deliver(delivery("m2", numbers=NUMBERS[:1]))  # the 31st part within 60 s
        await settle(agent, finished)
        got = [r for r in link.receipts() if r.message_id == "m2"]
        assert [r.state for r in got] == [ACCEPTED, FAILED]
        assert (got[1].failure_class, got[1].parts_done, got[1].attempt) == (FailureClass.LIMIT_EXCEEDED, 0, 1)
        assert len(agent.modem.parts_log) == 30  # nothing was sent
        assert [(d.message_id, d.recipient_index, d.attempt, d.parts) for d in agent.modem.dialogs] == [("m2", 0, 1, 1)]
        assert agent.modem.sent[-1] == ("m2", 0) and agent.modem.failed == [("m2", 0)]
        # Once the first parts are more than 60 s old there is room again.
        await trio.sleep_until(start + 60.5)
        link.deliver(delivery("m2", numbers=NUMBERS[:1], attempt=2))
        await settle(agent, finished)
        assert [(r.state, r.attempt) for r in link.receipts()] == [(ACCEPTED, 2), (SENT, 2)]
        assert len(agent.modem.parts_log) == 31 and len(agent.modem.dialogs) == 1
        assert agent.modem.max_parts_in_window(60.0) == 30


@pytest.mark.trio
async def test_android_limit_counts_a_multipart_send_as_a_whole(autojump_clock: object) -> None:
    agent = make_agent(android_limit_parts=5)
    async with trio.open_nursery() as nursery:
        agent.use_nursery(nursery)
        link = Link(agent)
        link.deliver(delivery("m1", numbers=NUMBERS[:1], parts=3), delivery("m2", numbers=NUMBERS[:1], parts=3))
        await settle(agent, finished)
        got = link.receipts()
        failed = [r for r in got if r.state == FAILED]
        assert len(failed) == 1 and failed[0].failure_class == FailureClass.LIMIT_EXCEEDED
        assert failed[0].parts_done == 0
        assert len(agent.modem.parts_log) == 3  # one whole send; none of the other's parts
        assert {p.message_id for p in agent.modem.parts_log} == {d.message_id for d in agent.modem.dialogs} ^ {"m1", "m2"}


@pytest.mark.trio
async def test_a_deliver_sends_from_its_sim(autojump_clock: object) -> None:
    agent = make_agent(sims=(SimInfo(1), SimInfo(2)))
    async with trio.open_nursery() as nursery:
        agent.use_nursery(nursery)
        link = Link(agent)
        assert [s.slot for s in link.hello.sims] == [1, 2]
        link.deliver(
            delivery("m1", numbers=NUMBERS[:1], sim=2, parts=2),
            delivery("m2", numbers=NUMBERS[:1], sim=0),  # the phone's default: the first SIM
            delivery("m3", numbers=NUMBERS[:1], sim=3),  # no such SIM
        )
        await settle(agent, finished)
        assert sorted((p.message_id, p.sim, p.part) for p in agent.modem.parts_log) == [
            ("m1", 2, 1), ("m1", 2, 2), ("m2", 1, 1)
        ]
        failed = [r for r in link.receipts() if r.state == FAILED]
        assert [(r.message_id, r.failure_class, r.error, r.parts_done) for r in failed] == [
            ("m3", FailureClass.GENERIC_FAILURE, "no_such_sim", 0)
        ]
        assert ("m3", 0) not in agent.modem.sent
        assert agent.modem.max_parts_in_window(60.0, sim=2) == 2 and agent.modem.max_parts_in_window(60.0, sim=1) == 1


@pytest.mark.trio
async def test_hello_reports_held_recipients_until_finished_and_acknowledged(autojump_clock: object) -> None:
    agent = make_agent(send_delay=10.0)
    async with trio.open_nursery() as nursery:
        agent.use_nursery(nursery)
        link = Link(agent)
        assert link.hello.held == () and link.hello.held_message_ids == ()
        link.deliver(delivery("m1"), delivery("m2", numbers=NUMBERS[:1], indices=(3,), attempt=2))
        link.ack(link.receipts())  # ACCEPTED stored; nothing finished yet
        link.close()

        link2 = Link(agent)  # unfinished recipients are reported although their ACCEPTED was acked
        assert set(link2.hello.held) == {
            HeldRecipient("m1", 0, 1), HeldRecipient("m1", 1, 1), HeldRecipient("m2", 3, 2)
        }
        assert set(link2.hello.held_message_ids) == {"m1", "m2"}
        await settle(agent, finished)
        link2.ack(link2.receipts())
        link2.close()

        link3 = Link(agent)  # everything finished and acknowledged
        assert link3.hello.held == () and link3.hello.held_message_ids == ()

        # Finished, but the ACCEPTED receipt was never acknowledged: still reported.
        link3.deliver(delivery("m4", numbers=NUMBERS[:1]))
        await settle(agent, finished)
        link3.close()
        link4 = Link(agent)
        assert link4.hello.held == (HeldRecipient("m4", 0, 1),)
        assert link4.hello.held_message_ids == ("m4",)


@pytest.mark.trio
async def test_settings_are_stored_from_welcome_and_from_a_settings_frame(autojump_clock: object) -> None:
    agent = make_agent()
    assert agent.settings is None
    first = PacingSettings((SimPacing(1, parts_per_minute=24, min_interval_ms=2500),), phone_parts_per_minute=27)
    link = Link(agent, settings=first)
    assert agent.settings == first
    changed = PacingSettings(
        (SimPacing(1, parts_per_minute=10), SimPacing(2, parts_per_hour=100)), phone_parts_per_minute=20,
        priority_bypass=True,
    )
    link.bridge.send_settings(changed)
    link.pump_to_phone()
    assert agent.settings == changed
    assert link.receipts() == []  # nothing to answer
    link.close()
    Link(agent)  # a Welcome without settings keeps the last ones
    assert agent.settings == changed
    third = PacingSettings(phone_parts_per_minute=5)
    Link(agent, settings=third)
    assert agent.settings == third


# --- Welcome ------------------------------------------------------------------


@pytest.mark.trio
async def test_pairing_welcome_credentials_replace_the_code() -> None:
    saved: list[Credentials] = []
    agent = PhoneAgent(
        "ws://127.0.0.1:1/device/v1", pairing_code="ABCD-1234", modem=SimulatedModem(), on_credentials=saved.append
    )
    agent.backoff.next_delay()
    Link(agent, credentials=Credentials("dev-1", "secret-token"))
    assert agent.token == "secret-token" and agent.pairing_code is None
    assert agent.credentials == Credentials("dev-1", "secret-token")
    assert saved == [Credentials("dev-1", "secret-token")]
    assert agent.backoff.attempt == 0  # reset by the Welcome


def test_constructor_checks() -> None:
    with pytest.raises(ValueError):
        PhoneAgent("ws://x/device/v1", modem=SimulatedModem())
    with pytest.raises(ValueError):
        PhoneAgent("ws://x/device/v1", token="t", encoding="xml", modem=SimulatedModem())
    with pytest.raises(ValueError):
        PhoneAgent("ws://x/device/v1", token="t", window=0, modem=SimulatedModem())
    with pytest.raises(ValueError):
        ModemOptions(failure_rate=2.0)


# --- the I/O loop against an in-process fake bridge ---------------------------


class FakeBridge:
    """A websockets.trio server that speaks just enough of the bridge side."""

    def __init__(self) -> None:
        self.authorizations: list[str] = []
        self.private_tokens: list[str] = []  # X-Smsgw-Private-Token of each upgrade ("" = none)
        self.refuse = False
        self.close_with: int | None = None  # close right after Welcome with this code
        self.sessions = 0
        self.port = 0


async def start_fake_bridge(nursery: trio.Nursery, bridge: FakeBridge) -> None:
    from websockets.trio.server import serve

    async def process_request(ws, request):  # type: ignore[no-untyped-def]
        bridge.authorizations.append(request.headers.get("Authorization", ""))
        bridge.private_tokens.append(request.headers.get(PRIVATE_TOKEN_HEADER, ""))
        return ws.respond(401, "no\n") if bridge.refuse else None

    async def handler(ws) -> None:  # type: ignore[no-untyped-def]
        session = DeviceSession(Side.BRIDGE, Encoding(ws.subprotocol))
        session.receive_frame(await ws.recv())
        session.events_received()
        pairing = bridge.authorizations[-1].startswith("Pairing ")
        session.send_welcome(
            "dev-9",
            ping_interval=20,
            server_time=datetime.now(timezone.utc),
            credentials=Credentials("dev-9", "tok-9") if pairing else None,
        )
        for frame in session.frames_to_send():
            await ws.send(frame)
        bridge.sessions += 1
        if bridge.close_with is not None:
            await ws.aclose(bridge.close_with, "test")
            return
        async for _ in ws:
            pass

    server = await nursery.start(
        lambda task_status: serve(
            handler,
            0,
            host="127.0.0.1",
            subprotocols=["smsgw.device.v1+proto", "smsgw.device.v1+json"],
            process_request=process_request,
            compression=None,
            task_status=task_status,
        )
    )
    bridge.port = server.listeners[0].socket.getsockname()[1]


def quick_agent(bridge: FakeBridge, **kwargs: object) -> PhoneAgent:
    return PhoneAgent(
        f"ws://127.0.0.1:{bridge.port}/device/v1",
        modem=SimulatedModem(),
        backoff=Backoff(scale=0.001),
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.trio
async def test_run_pairs_then_reconnects_with_the_token_after_drop_session() -> None:
    bridge = FakeBridge()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await start_fake_bridge(nursery, bridge)
            agent = quick_agent(bridge, pairing_code="CODE-1", encoding="json")
            await nursery.start(agent.run)  # returns at the first Welcome
            assert agent.connected and agent.sessions == 1 and agent.token == "tok-9"
            await agent.drop_session()
            assert not agent.connected
            await agent.wait_connected()
            assert agent.sessions == 2
            assert bridge.authorizations == ["Pairing CODE-1", "Bearer tok-9"]
            nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_run_stops_on_replaced_and_on_http_401() -> None:
    bridge = FakeBridge()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await start_fake_bridge(nursery, bridge)
            bridge.close_with = 4003
            agent = quick_agent(bridge, token="tok-9")
            await agent.run()
            assert agent.closed_reason == "replaced" and agent.close_code == 4003
            assert agent.sessions == 1

            bridge.refuse = True
            refused = quick_agent(bridge, token="bad")
            await refused.run()
            assert refused.closed_reason == "http_401" and refused.sessions == 0
            nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_run_retries_other_closes_with_backoff() -> None:
    bridge = FakeBridge()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await start_fake_bridge(nursery, bridge)
            bridge.close_with = 1013  # try again later
            agent = quick_agent(bridge, token="tok-9")
            nursery.start_soon(agent.run)
            await agent.wait_for(lambda a: a.sessions >= 3)
            assert agent.closed_reason is None
            await agent.aclose()
            nursery.cancel_scope.cancel()
