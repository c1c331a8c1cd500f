"""The phone's store logic, driven without sockets.

A :class:`Link` joins the agent's PHONE ``DeviceSession`` to a BRIDGE
``DeviceSession``: frames the bridge queues are fed to the phone and its
events to :meth:`PhoneAgent.handle_event`; frames the agent queues are fed to
the bridge, which reports the receipts. Modem delays run on trio's autojump
clock, so nothing waits for real.

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
    AckReceived,
    Credentials,
    Delivery,
    DeviceSession,
    Encoding,
    HelloReceived,
    Receipt,
    ReceiptReceived,
    ReceiptState,
    Side,
)
from smsgw_agent import Backoff, ModemOptions, PhoneAgent, SimulatedModem

ACCEPTED, SENT, DELIVERED, FAILED = (
    ReceiptState.ACCEPTED,
    ReceiptState.SENT,
    ReceiptState.DELIVERED,
    ReceiptState.FAILED,
)
NUMBERS = ("+15550000001", "+15550000002")


def make_agent(**modem: object) -> PhoneAgent:
    options = ModemOptions(**{"send_delay": 0.05, "delivery_delay": 0.05, "seed": 1, **modem})  # type: ignore[arg-type]
    return PhoneAgent("ws://127.0.0.1:1/device/v1", token="t", modem=SimulatedModem(options), window=4)


def delivery(message_id: str, *, numbers: tuple[str, ...] = NUMBERS, report: bool = True) -> Delivery:
    return Delivery(message_id, numbers, text="hello", with_delivery_report=report)


class Link:
    """One session between the agent and a sans-I/O bridge."""

    def __init__(self, agent: PhoneAgent, *, encoding: Encoding = Encoding.PROTO, credentials: Credentials | None = None):
        self.agent = agent
        self.phone = DeviceSession(Side.PHONE, encoding, window=agent.window)
        self.bridge = DeviceSession(Side.BRIDGE, encoding)
        self.phone.send_hello(app_version="test", sims=agent.sims, held_message_ids=agent.held_unacked_ids())
        agent.attach_session(self.phone)
        for frame in self.phone.frames_to_send():
            self.bridge.receive_frame(frame)
        (hello,) = self.bridge.events_received()
        assert isinstance(hello, HelloReceived)
        self.hello = hello
        self.bridge.send_welcome(
            "dev-1", ping_interval=20, server_time=datetime.now(timezone.utc), credentials=credentials
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
        assert agent.held_unacked_ids() == ["m1"]
        await settle(agent, lambda a: a.statistics().delivered == 2)
        rest = link.receipts()
        assert sorted(states(rest)) == sorted(
            [("m1", SENT, 0), ("m1", SENT, 1), ("m1", DELIVERED, 0), ("m1", DELIVERED, 1)]
        )
        assert [r.event_id for r in first + rest] == [1, 2, 3, 4, 5]
        assert all(r.time is not None for r in first + rest)
        assert agent.modem.sent == [("m1", 0), ("m1", 1)]
        assert agent.received == ["m1"] and agent.accepted == {"m1"}
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
        assert agent.statistics().delivered == 0


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
        assert "m1" not in agent.held
        assert agent.statistics().dropped == 1
        assert agent.held_unacked_ids() == []


@pytest.mark.trio
async def test_drop_after_sending_started_is_too_late(autojump_clock: object) -> None:
    agent = make_agent()
    async with trio.open_nursery() as nursery:
        agent.use_nursery(nursery)
        link = Link(agent)
        link.deliver(delivery("m1"))
        await trio.testing.wait_all_tasks_blocked()  # the modem is busy with it
        link.bridge.send_drop("m1", "expired")
        link.pump_to_phone()
        await settle(agent, finished)
        assert agent.modem.sent == [("m1", 0), ("m1", 1)]
        assert agent.statistics().dropped == 0


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
        assert link.receipts() == [] and agent.accepted == set()
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
        self.refuse = False
        self.close_with: int | None = None  # close right after Welcome with this code
        self.sessions = 0
        self.port = 0


async def start_fake_bridge(nursery: trio.Nursery, bridge: FakeBridge) -> None:
    from websockets.trio.server import serve

    async def process_request(ws, request):  # type: ignore[no-untyped-def]
        bridge.authorizations.append(request.headers.get("Authorization", ""))
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
