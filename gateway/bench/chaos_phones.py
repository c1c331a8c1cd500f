"""Phones for the chaos run: the reference agent (smsgw_agent), recording what it saw and sent.

Each phone records every Deliver, Drop and Welcome it received and every session end
(`PhoneFrame`), and its modem records every send attempt per recipient with the parts that
went out (`ModemSend`). They are the reference phone because the checker judges the server
against a phone that keeps the protocol; the bench's lean fleet keeps no store and would lose
receipts across reconnects by design.

Killing a phone models the app process dying: its connection drops without a close and it
stays away for a while, then runs again. What a real phone keeps on disk (held recipients,
unacknowledged receipts) survives, and so does the radio: a send the modem had started goes
on and its receipts wait for the next session. So modem sends run in a `hardware` nursery
that outlives every session and every kill.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import trio

from device_bridge.protocol import DeliverReceived, Delivery, DropReceived, Event, WelcomeReceived
from gateway.bench.chaos_history import ModemSend, PhoneFrame
from smsgw_agent import ModemOptions, PhoneAgent, SimulatedModem
from smsgw_agent.modem import SendResult

__all__ = ["RecordingModem", "ChaosPhone"]


class RecordingModem(SimulatedModem):
    """A simulated modem that records each send attempt when it ends (`sends`), and counts
    the ones under way (`busy`)."""

    def __init__(self, options: ModemOptions, phone: str, sends: list[ModemSend]) -> None:
        super().__init__(options)
        self.phone = phone
        self.sends = sends
        self.busy = 0

    async def send(self, phone_number: str, delivery: Delivery, recipient_index: int | None = None, *,
                   on_part_sent: Callable[[int], None] | None = None, sim: int | None = None) -> SendResult:
        assert recipient_index is not None  # the agent always names it
        went_out = 0

        def part_sent(part: int) -> None:
            nonlocal went_out
            went_out = part
            if on_part_sent is not None:
                on_part_sent(part)

        parts = max(delivery.parts, 1)
        self.busy += 1
        failure = "cut_short"  # the run ended mid-send (never when it ends quiescent)
        try:
            result = await super().send(phone_number, delivery, recipient_index, on_part_sent=part_sent, sim=sim)
            failure = "" if result.ok else (result.failure_class.name if result.failure_class else "GENERIC_FAILURE")
            return result
        finally:
            self.busy -= 1
            self.sends.append(ModemSend(self.phone, delivery.message_id, recipient_index, delivery.attempt,
                                        parts, went_out, failure))


class ChaosPhone(PhoneAgent):
    """A reference phone whose sends run in `hardware` and whose frames go to `frames`."""

    def __init__(self, *args: Any, hardware: trio.Nursery, frames: list[PhoneFrame], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hardware = hardware
        self.frames = frames
        self.scope: trio.CancelScope | None = None
        self.kills = 0

    def use_nursery(self, nursery: trio.Nursery | None) -> None:
        """The radio outlives the app: background sends always go to the hardware nursery."""
        super().use_nursery(self.hardware)

    def handle_event(self, event: Event) -> None:
        now = time.monotonic()
        if isinstance(event, DeliverReceived):
            d = event.delivery
            indices = d.recipient_indices or tuple(range(len(d.phone_numbers)))
            self.frames.append(PhoneFrame(self.name, "deliver", d.message_id, tuple(indices), d.attempt, now))
        elif isinstance(event, DropReceived):
            self.frames.append(PhoneFrame(self.name, "drop", event.message_id, t=now))
        elif isinstance(event, WelcomeReceived):
            self.frames.append(PhoneFrame(self.name, "welcome", t=now))
        super().handle_event(event)

    def detach_session(self) -> None:
        if self._proto is not None:
            self.frames.append(PhoneFrame(self.name, "closed", t=time.monotonic()))
        super().detach_session()

    @property
    def quiet(self) -> bool:
        """Connected, nothing left to tell the bridge, nothing held unsent, nothing on the radio."""
        modem = self.modem
        busy = modem.busy if isinstance(modem, RecordingModem) else 0
        sending = any(not r.finished for r in self._recipients.values())
        return self.connected and not self.unacked and not busy and not sending

    async def live(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the app until killed (`kill`) or the run ends; `task_status` at its first Welcome."""
        with trio.fail_after(30):
            while self._running:  # a kill's unwinding, still under way
                await trio.sleep(0.01)
        with trio.CancelScope() as scope:
            self.scope = scope
            await self.run(task_status=task_status)

    def kill(self) -> None:
        """The app process dies: the connection drops, the store and the radio stay."""
        if self.scope is not None:
            self.kills += 1
            self.scope.cancel()
            self.scope = None
