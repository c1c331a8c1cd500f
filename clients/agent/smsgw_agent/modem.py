"""A simulated modem: what a phone's SMS stack would do, with delays and failures.

It never looks at a message body and never logs; it only records which
``(message_id, recipient_index)`` pairs it was asked to send, so that tests
can assert that each recipient was sent exactly once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import trio

from device_bridge.protocol import Delivery

__all__ = ["ModemOptions", "SimulatedModem", "GENERIC_FAILURE"]

#: The error a failed send reports (Android's ``RESULT_ERROR_GENERIC_FAILURE``).
GENERIC_FAILURE = "generic_failure"


@dataclass(frozen=True, slots=True)
class ModemOptions:
    """How the simulated modem behaves.

    Attributes:
        send_delay: Seconds one send takes.
        delivery_delay: Seconds from a successful send to its delivery report.
        failure_rate: Share of sends that fail, 0..1.
        delivery_reports: Whether the carrier reports delivery at all.
        seed: Seed of the failure draws (None = random).
    """

    send_delay: float = 0.05
    delivery_delay: float = 0.05
    failure_rate: float = 0.0
    delivery_reports: bool = True
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.send_delay < 0 or self.delivery_delay < 0:
            raise ValueError("modem delays must not be negative")
        if not 0.0 <= self.failure_rate <= 1.0:
            raise ValueError("failure_rate must be in 0..1")


class SimulatedModem:
    """Sends nothing for real; sleeps, maybe fails, and records what it sent.

    Attributes:
        options: The behaviour.
        sent: Every ``(message_id, recipient_index)`` a send was attempted for,
            in order (failed attempts included).
        failed: The attempts that failed.
    """

    def __init__(self, options: ModemOptions | None = None) -> None:
        self.options = options if options is not None else ModemOptions()
        self._rng = random.Random(self.options.seed)
        self.sent: list[tuple[str, int]] = []
        self.failed: list[tuple[str, int]] = []

    def __repr__(self) -> str:
        return f"<SimulatedModem sent={len(self.sent)} failed={len(self.failed)}>"

    @property
    def delivery_reports(self) -> bool:
        """Whether delivery reports ever arrive."""
        return self.options.delivery_reports

    @property
    def delivery_report_delay(self) -> float:
        """Seconds from a successful send to its delivery report."""
        return self.options.delivery_delay

    async def send(
        self, phone_number: str, delivery: Delivery, recipient_index: int | None = None
    ) -> tuple[bool, str]:
        """Send ``delivery`` to one recipient.

        Args:
            phone_number: The recipient (never logged).
            delivery: The message.
            recipient_index: Its index in ``delivery.phone_numbers``; looked
                up by number when omitted.

        Returns:
            ``(True, "")`` when sent, ``(False, "generic_failure")`` when not.
        """
        if recipient_index is None:
            recipient_index = delivery.phone_numbers.index(phone_number)
        # Recorded before the delay: an attempt cut short still counts as sent.
        self.sent.append((delivery.message_id, recipient_index))
        await trio.sleep(self.options.send_delay)
        if self.options.failure_rate > 0 and self._rng.random() < self.options.failure_rate:
            self.failed.append((delivery.message_id, recipient_index))
            return False, GENERIC_FAILURE
        return True, ""

    async def wait_delivery_report(self, phone_number: str, delivery: Delivery, recipient_index: int) -> bool:
        """Wait for the carrier's delivery report of a sent message.

        Returns:
            True when the report says delivered; False when no report comes.
        """
        if not self.options.delivery_reports:
            return False
        await trio.sleep(self.options.delivery_delay)
        return True
