"""Run reference phones (smsgw_agent) inside a test's trio loop against a real server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
from smsgw_client import Client

from device_bridge.protocol import Delivery
from smsgw_agent import Backoff, ModemOptions, PhoneAgent, SimulatedModem
from smsgw_agent.modem import SendResult

__all__ = ["start_phones", "GatedModem", "UNPACED_MODEM"]

# The test servers run unpaced (tests/helpers/server.py LENIENT_LIMITS), so their phones do
# not enforce Android's 30-parts-per-minute limit either; the scheduler's own tests
# (test_scheduler.py) keep it on and assert it is never tripped.
UNPACED_MODEM = ModemOptions(send_delay=0.01, delivery_delay=0.01, android_limit_parts=0)


class GatedModem(SimulatedModem):
    """A modem that accepts work but sends nothing until `gate` is set: keeps messages in flight.
    It keeps every Deliver it was asked to send (`asked`), as the phone handed it over."""

    def __init__(self, options: ModemOptions, *, gate: trio.Event | None = None) -> None:
        super().__init__(options)
        self.gate = gate
        self.asked: list[Delivery] = []

    async def send(self, phone_number: str, delivery: Delivery, *args: Any, **kwargs: Any) -> SendResult:
        self.asked.append(delivery)
        if self.gate is not None:
            await self.gate.wait()
        return await super().send(phone_number, delivery, *args, **kwargs)


async def start_phones(
    nursery: trio.Nursery,
    grpc_target: str,
    token: str,
    device_url: str,
    count: int,
    *,
    window: int = 16,
    modem: ModemOptions | None = None,
    encoding: str = "proto",
    gate: trio.Event | None = None,
    push_token_for: Callable[[str], str] | None = None,
    **agent: Any,
) -> list[PhoneAgent]:
    """Pair `count` phones through the API and wait until each had its first Welcome.
    `push_token_for(name)`: each phone's push token (FCM wake-ups); none by default."""

    def codes() -> list[str]:
        with Client(grpc_target, token) as client:
            return [client.create_pairing_code(device_name=f"test-{i}").code for i in range(count)]

    phones = []
    for i, code in enumerate(await trio.to_thread.run_sync(codes)):
        phone = PhoneAgent(
            device_url,
            pairing_code=code,
            window=window,
            encoding=encoding,
            modem=GatedModem(modem or UNPACED_MODEM, gate=gate),
            # Tests reconnect fast; the schedule's shape is unit-tested in test_backoff.
            backoff=Backoff(scale=0.02),
            name=f"test-{i}",
            push_token=push_token_for(f"test-{i}") if push_token_for is not None else "",
            **agent,  # e.g. private_token, passphrases, doze_after
        )
        with trio.fail_after(30):
            await nursery.start(phone.run)
        phones.append(phone)
    return phones

