"""Receive smsgw webhooks safely (RELIABILITY 15): verify the Standard Webhooks signature
over the raw body, refuse stale or future timestamps, and drop repeats by webhook-id.

smsgw delivers at least once: after a timeout or a restart the same event comes again
with the same ``webhook-id`` (and a new timestamp and signature). Hand the receiver the
body exactly as it came off the wire — not a re-serialised JSON object — or no signature
will match::

    receiver = WebhookReceiver(os.environ["SMSGW_WEBHOOK_SECRET"])

    def handle(raw_body: bytes, headers: Mapping[str, str]) -> int:
        try:
            event = receiver.receive(raw_body, headers)
        except WebhookVerificationError:
            return 400            # not from smsgw (or tampered with, or replayed late)
        if event is not None:      # None: seen before, already handled
            try:
                process(event)
            except Exception:
                receiver.forget(event["id"])   # not handled after all: take the retry
                return 500
        return 204
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["WebhookReceiver", "WebhookVerificationError", "DEFAULT_TOLERANCE"]

DEFAULT_TOLERANCE = 300.0  # seconds a timestamp may be off, either way
_PREFIX = "whsec_"


class WebhookVerificationError(Exception):
    """The request is not a valid smsgw webhook; the message says why (safe to log)."""


class WebhookReceiver:
    """Verifies and deduplicates smsgw webhook requests.

    Args:
        secrets: The webhook's ``whsec_`` secret, or several during a rotation (any one
            matching is enough).
        tolerance: Seconds the ``webhook-timestamp`` may differ from now.
        is_new: Called with each verified webhook-id; return False for one already
            handled. The default remembers the last ``remember`` ids in memory; pass a
            function backed by your database (an insert into a unique column) to dedupe
            across restarts and processes.
        remember: Size of the default in-memory dedupe window.
        clock: Seconds since the epoch (tests pass a fake).
    """

    def __init__(
        self,
        secrets: str | Sequence[str],
        *,
        tolerance: float = DEFAULT_TOLERANCE,
        is_new: Callable[[str], bool] | None = None,
        remember: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        names = [secrets] if isinstance(secrets, str) else list(secrets)
        if not names:
            raise ValueError("at least one webhook secret is needed")
        self._keys = [_key(s) for s in names]
        self.tolerance = tolerance
        self._clock = clock
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._seen_lock = threading.Lock()  # receivers run handlers in threads
        self._remember = remember
        self._is_new = is_new if is_new is not None else self._remembered_new

    def verify(self, body: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
        """The parsed event if the signature and timestamp are valid; raises otherwise."""
        lower = {k.lower(): v for k, v in headers.items()}
        msg_id, stamp, signatures = (lower.get(h, "") for h in ("webhook-id", "webhook-timestamp", "webhook-signature"))
        if not (msg_id and stamp and signatures):
            raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature header")
        try:
            sent_at = int(stamp)
        except ValueError:
            raise WebhookVerificationError("webhook-timestamp is not an integer") from None
        if abs(self._clock() - sent_at) > self.tolerance:
            raise WebhookVerificationError("webhook-timestamp is outside the tolerance (replayed, or a clock is off)")
        signed = f"{msg_id}.{sent_at}.".encode() + body
        expected = [hmac.new(key, signed, hashlib.sha256).digest() for key in self._keys]
        if not any(_matches(candidate, expected) for candidate in signatures.split()):
            raise WebhookVerificationError("no signature matches (wrong secret, or the body was changed)")
        try:
            event: dict[str, Any] = json.loads(body)
        except ValueError:
            raise WebhookVerificationError("the body is not JSON") from None
        return event

    def receive(self, body: bytes, headers: Mapping[str, str]) -> dict[str, Any] | None:
        """:meth:`verify`, then None if this webhook-id was already received."""
        event = self.verify(body, headers)
        msg_id = next(v for k, v in headers.items() if k.lower() == "webhook-id")
        return event if self._is_new(msg_id) else None

    def forget(self, msg_id: str) -> None:
        """Handling the event with this webhook-id failed: let its retry through. (With your
        own ``is_new``, undo what it recorded instead.)"""
        with self._seen_lock:
            self._seen.pop(msg_id, None)

    def _remembered_new(self, msg_id: str) -> bool:
        with self._seen_lock:
            if msg_id in self._seen:
                self._seen.move_to_end(msg_id)
                return False
            self._seen[msg_id] = None
            if len(self._seen) > self._remember:
                self._seen.popitem(last=False)
            return True


def _key(secret: str) -> bytes:
    try:
        key = base64.b64decode(secret.removeprefix(_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is whsec_ followed by base64") from None
    if not key:
        raise ValueError("empty webhook secret")
    return key


def _matches(candidate: str, expected: list[bytes]) -> bool:
    version, _, encoded = candidate.partition(",")
    if version != "v1":
        return False
    try:
        given = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return False
    return any(hmac.compare_digest(given, e) for e in expected)
