"""A simulated modem: what a phone's SMS stack would do, with delays, limits and failures.

It models the parts of Android that a gateway must not trip, so server tests can
prove that its scheduler never does:

* **Multipart sends.** One send is every part of one recipient, as
  ``SmsManager.sendMultipartTextMessage`` does: the parts go out one after the
  other (``send_delay`` each), and the sent-callback of each part fires as it
  goes (``on_part_sent(k)``, k = 1..parts). Each part gets its own delivery
  report (:meth:`SimulatedModem.wait_delivery_report`).
* **Android's per-app SMS limit** (``SmsUsageMonitor``): at most
  ``android_limit_parts`` parts in any sliding ``android_limit_window`` seconds
  per phone, all SIMs together. A send is checked as a whole, with its part
  count, before anything goes out; one that would exceed the limit raises the
  OS "confirmation dialog" instead: nothing is sent, the modem records it in
  :attr:`SimulatedModem.dialogs` and the send fails with ``LIMIT_EXCEEDED``
  (the simulated user always denies). As in Android, the parts of an allowed
  send are counted at the time of the check, radio failures included, a
  refused send counts nothing, and a part exactly ``android_limit_window``
  seconds old still counts.
* **Carrier / radio failures**: on demand (:meth:`SimulatedModem.fail_next`),
  optionally only for one number and optionally after some parts went out, and
  at random (``failure_rate``, with ``failure_class``).

Time is ``trio.current_time()``, so everything runs on a test's ``MockClock``.
It never looks at a message body and never logs; it records ids, indices,
SIMs and times only (:attr:`SimulatedModem.parts_log`, ``sent``, ``failed``,
``dialogs``), so tests can assert what went out, when and from which SIM.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import trio

from device_bridge.protocol import Delivery, FailureClass

__all__ = [
    "ANDROID_LIMIT_PARTS",
    "ANDROID_LIMIT_WINDOW",
    "GENERIC_FAILURE",
    "LimitDialog",
    "ModemOptions",
    "PartSent",
    "SendResult",
    "SimulatedModem",
    "failure_code",
    "max_parts_in_window",
]

#: The error a failed send reports by default (Android's ``RESULT_ERROR_GENERIC_FAILURE``).
GENERIC_FAILURE = "generic_failure"
#: Android's default per-app limit (``Settings.Global.SMS_OUTGOING_CHECK_MAX_COUNT``) ...
ANDROID_LIMIT_PARTS = 30
#: ... in any sliding window of this many seconds (``SMS_OUTGOING_CHECK_INTERVAL_MS``).
ANDROID_LIMIT_WINDOW = 60.0


def failure_code(failure_class: FailureClass) -> str:
    """The short error string of a failure class, e.g. ``"no_service"`` (never a number or body)."""
    return FailureClass(failure_class).name.lower()


@dataclass(frozen=True, slots=True)
class ModemOptions:
    """How the simulated modem behaves.

    Attributes:
        send_delay: Seconds each part takes to go out (its sent-callback fires then).
        delivery_delay: Seconds from a part's sent-callback to its delivery report.
        failure_rate: Share of sends that fail at random, 0..1, before any part goes out.
        failure_class: Why those random failures fail (default GENERIC_FAILURE).
        delivery_reports: Whether the carrier reports delivery at all.
        seed: Seed of the failure draws (None = random).
        android_limit_parts: Android's per-app limit: parts per sliding window per
            phone (all SIMs together); 0 = no limit.
        android_limit_window: The window of that limit, in seconds.
    """

    send_delay: float = 0.05
    delivery_delay: float = 0.05
    failure_rate: float = 0.0
    delivery_reports: bool = True
    seed: int | None = None
    failure_class: FailureClass = FailureClass.GENERIC_FAILURE
    android_limit_parts: int = ANDROID_LIMIT_PARTS
    android_limit_window: float = ANDROID_LIMIT_WINDOW

    def __post_init__(self) -> None:
        if self.send_delay < 0 or self.delivery_delay < 0:
            raise ValueError("modem delays must not be negative")
        if not 0.0 <= self.failure_rate <= 1.0:
            raise ValueError("failure_rate must be in 0..1")
        try:
            object.__setattr__(self, "failure_class", FailureClass(self.failure_class))
        except ValueError:
            raise ValueError("failure_class must be a FailureClass") from None
        if self.android_limit_parts < 0:
            raise ValueError("android_limit_parts must not be negative (0 = off)")
        if self.android_limit_parts and self.android_limit_window <= 0:
            raise ValueError("android_limit_window must be positive")


@dataclass(frozen=True, slots=True)
class PartSent:
    """One SMS part that went out, from which SIM, of what.

    ``time`` is when it went out (its sent-callback; ``trio.current_time()``),
    ``started`` when the send of its recipient began: the moment Android's
    per-app limit counted it, and the one closest to the server's dispatch.
    ``part`` is 1-based, of ``parts`` for that recipient.
    """

    time: float
    sim: int
    message_id: str
    recipient_index: int
    attempt: int
    part: int
    parts: int
    started: float


@dataclass(frozen=True, slots=True)
class LimitDialog:
    """A send refused by Android's per-app limit (the confirmation dialog): nothing went out."""

    time: float
    sim: int
    message_id: str
    recipient_index: int
    attempt: int
    parts: int


@dataclass(frozen=True, slots=True)
class SendResult:
    """How one send (every part of one recipient) ended.

    ``parts_sent`` counts the parts that went out (all of them when ``ok``);
    ``failure_class`` and ``error`` (its short code, e.g. ``"no_service"``)
    say why a failed one failed.
    """

    ok: bool
    parts_sent: int
    failure_class: FailureClass | None = None
    error: str = ""


@dataclass(slots=True, repr=False)
class _Rule:
    failure_class: FailureClass
    remaining: int
    phone_number: str | None
    after_parts: int

    def __repr__(self) -> str:  # never the number
        return f"_Rule({self.failure_class.name}, remaining={self.remaining}, after_parts={self.after_parts})"


class SimulatedModem:
    """Sends nothing for real; sleeps, obeys Android's limit, maybe fails, and records what it sent.

    Attributes:
        options: The behaviour.
        sent: Every ``(message_id, recipient_index)`` a send was attempted for,
            once per attempt (not per part), in order: failed attempts and
            refused ones (:attr:`dialogs`) included.
        failed: The attempts that failed, for whatever reason, likewise.
        parts_log: Every part that went out, in order (:class:`PartSent`).
        dialogs: Every send Android's per-app limit refused (:class:`LimitDialog`);
            a well-paced server keeps this empty.
    """

    def __init__(self, options: ModemOptions | None = None) -> None:
        self.options = options if options is not None else ModemOptions()
        self._rng = random.Random(self.options.seed)
        self.sent: list[tuple[str, int]] = []
        self.failed: list[tuple[str, int]] = []
        self.parts_log: list[PartSent] = []
        self.dialogs: list[LimitDialog] = []
        self._rules: list[_Rule] = []
        self._android: deque[float] = deque()  # check times, one per part counted

    def __repr__(self) -> str:
        return (
            f"<SimulatedModem sent={len(self.sent)} failed={len(self.failed)} "
            f"parts={len(self.parts_log)} dialogs={len(self.dialogs)}>"
        )

    @property
    def delivery_reports(self) -> bool:
        """Whether delivery reports ever arrive."""
        return self.options.delivery_reports

    @property
    def delivery_report_delay(self) -> float:
        """Seconds from a part's sent-callback to its delivery report."""
        return self.options.delivery_delay

    # --- failures on demand -------------------------------------------------

    def fail_next(
        self,
        failure_class: FailureClass,
        count: int = 1,
        *,
        phone_number: str | None = None,
        after_parts: int = 0,
    ) -> None:
        """Make the next ``count`` sends fail with ``failure_class``.

        Rules apply in the order they were made; each send uses up at most
        one. A send Android's limit refuses uses none (the radio never saw it).

        Args:
            failure_class: What the failure reports.
            count: How many sends this rule fails.
            phone_number: Only sends to this number (None = any).
            after_parts: Let this many parts go out first, then fail the next
                one (at most ``parts - 1`` of a send: its last part is the one
                that fails). 0 fails before anything goes out.
        """
        if count < 1:
            raise ValueError("count must be at least 1")
        if after_parts < 0:
            raise ValueError("after_parts must not be negative")
        self._rules.append(_Rule(FailureClass(failure_class), count, phone_number, after_parts))

    @property
    def pending_failures(self) -> int:
        """Sends still to fail from :meth:`fail_next` rules."""
        return sum(rule.remaining for rule in self._rules)

    def _take_rule(self, phone_number: str) -> _Rule | None:
        for rule in self._rules:
            if rule.phone_number is None or rule.phone_number == phone_number:
                rule.remaining -= 1
                if rule.remaining == 0:
                    self._rules.remove(rule)
                return rule
        return None

    # --- Android's per-app limit --------------------------------------------

    def _android_check(self, parts: int, now: float) -> bool:
        """``SmsUsageMonitor.check``: room for ``parts`` more? If so they are counted now."""
        limit = self.options.android_limit_parts
        if not limit:
            return True
        window = self._android
        begin = now - self.options.android_limit_window
        while window and window[0] < begin:  # Android keeps a part exactly one window old
            window.popleft()
        if len(window) + parts > limit:
            return False
        window.extend([now] * parts)
        return True

    def android_window_used(self) -> int:
        """Parts Android's limit counts right now (those checked within the last window)."""
        begin = trio.current_time() - self.options.android_limit_window
        return sum(1 for t in self._android if t >= begin)

    # --- sending ------------------------------------------------------------

    async def send(
        self,
        phone_number: str,
        delivery: Delivery,
        recipient_index: int | None = None,
        *,
        on_part_sent: Callable[[int], None] | None = None,
        sim: int | None = None,
    ) -> SendResult:
        """Send every part of ``delivery`` to one recipient.

        Args:
            phone_number: The recipient (never logged).
            delivery: The Deliver; its ``parts`` (0 = 1) is the part count, its
                ``attempt`` recorded with each part.
            recipient_index: The message's recipient index of ``phone_number``;
                looked up in the Deliver when omitted.
            on_part_sent: Called with k (1..parts) as part k's sent-callback fires.
            sim: The SIM slot to send from; None = ``delivery.sim_number``, or 1
                when that is 0 (the phone's default).

        Returns:
            A :class:`SendResult`; ``parts_sent`` is how many parts went out.
        """
        if recipient_index is None:
            by_number = {number: index for index, number in delivery.numbers_by_index().items()}
            recipient_index = by_number[phone_number]
        message_id, attempt = delivery.message_id, delivery.attempt
        if sim is None:
            sim = delivery.sim_number or 1
        parts = max(delivery.parts, 1)
        key = (message_id, recipient_index)
        # Recorded before any delay: an attempt cut short still counts as sent.
        self.sent.append(key)
        now = trio.current_time()
        if not self._android_check(parts, now):
            self.dialogs.append(LimitDialog(now, sim, message_id, recipient_index, attempt, parts))
            self.failed.append(key)
            return SendResult(False, 0, FailureClass.LIMIT_EXCEEDED, failure_code(FailureClass.LIMIT_EXCEEDED))
        fail_class: FailureClass | None = None
        fail_after = 0
        rule = self._take_rule(phone_number)
        if rule is not None:
            fail_class, fail_after = rule.failure_class, min(rule.after_parts, parts - 1)
        elif self.options.failure_rate > 0 and self._rng.random() < self.options.failure_rate:
            fail_class = self.options.failure_class
        for part in range(1, parts + 1):
            await trio.sleep(self.options.send_delay)
            if fail_class is not None and part > fail_after:
                self.failed.append(key)
                return SendResult(False, part - 1, fail_class, failure_code(fail_class))
            self.parts_log.append(
                PartSent(trio.current_time(), sim, message_id, recipient_index, attempt, part, parts, now)
            )
            if on_part_sent is not None:
                on_part_sent(part)
        return SendResult(True, parts)

    async def wait_delivery_report(
        self, phone_number: str, delivery: Delivery, recipient_index: int, part: int = 1
    ) -> bool:
        """Wait for the carrier's delivery report of one sent part.

        Returns:
            True when the report says delivered; False when no report comes.
        """
        if not self.options.delivery_reports:
            return False
        await trio.sleep(self.options.delivery_delay)
        return True

    # --- checks for tests ---------------------------------------------------

    def max_parts_in_window(self, seconds: float, *, sim: int | None = None, by: str = "start") -> int:
        """The most parts :attr:`parts_log` has in any window of ``seconds`` (one SIM, or all).

        ``by="start"`` places each part at the start of its recipient's send
        (``PartSent.started``): where Android's per-app limit counts it and
        the server's pacing (by dispatch) does. ``by="part"`` places it where
        it went out (``PartSent.time``), a multipart send's parts
        ``send_delay`` apart. A window is half-open, ``(t - seconds, t]``;
        Android and the server's pacing count closed ones, ``[t - seconds, t]``.
        """
        if by not in ("start", "part"):
            raise ValueError("by must be 'start' or 'part'")
        return max_parts_in_window(
            (p.started if by == "start" else p.time for p in self.parts_log if sim is None or p.sim == sim), seconds
        )


def max_parts_in_window(times: Iterable[float], seconds: float) -> int:
    """The most of ``times`` that fall in any half-open window ``(t - seconds, t]``."""
    ordered = sorted(times)
    best = 0
    for end, t in enumerate(ordered):
        start = bisect_right(ordered, t - seconds, 0, end + 1)
        best = max(best, end - start + 1)
    return best

