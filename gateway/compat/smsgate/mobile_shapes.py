"""The SMSGate app's JSON (the mobile API, `../shared/smsgate-api.md` §4) to and from smsgw's
records: the messages a pull hands over, the state reports a PATCH brings back, the SIM cards.

A message goes to the app under an id of its own per Deliver (`wire_id`): the message's id
when the Deliver is the message's first attempt to every recipient, else the message id with
the attempt and first recipient index after dots. The app ignores an id it already knows, so a
retry, or recipients that pacing let go later, must come under a new id to be sent at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.compat.smsgate.shapes import data_field, iso, parse_time
from gateway.devices.records import SimRecord
from gateway.errors import InvalidArgument
from gateway.messages.records import DispatchUnit, ReceiptUpdate
from gateway.otp.keys import SEALED_PREFIX, OtpKeys, opened_otp
from gateway.types import State

__all__ = ["wire_id", "parse_wire_id", "mobile_message", "cancelling", "receipts", "sims", "Report"]

# What the app reports -> smsgw's receipt state. "Pending" is the app's "I have it" (the Go
# server maps it to Processed too); "Cancelled" means the app dropped it unsent: smsgw already
# holds the message CANCELLED (that is why the app was asked to), so it changes nothing.
_REPORTED = {
    "Pending": State.ACCEPTED, "Processed": State.ACCEPTED, "Sent": State.SENT, "Delivered": State.DELIVERED,
    "Failed": State.FAILED,
}
_KNOWN = {*_REPORTED, "Cancelling", "Cancelled"}
_MAX_NUMBERS = 100


def wire_id(unit: DispatchUnit) -> str:
    whole = unit.attempt == 1 and len(unit.recipient_indices) == len(unit.message.recipients)
    return unit.message.id if whole else f"{unit.message.id}.{unit.attempt}.{unit.recipient_indices[0]}"


def parse_wire_id(value: str) -> tuple[str, int]:
    """(message id, attempt): a bare message id is its first attempt (see `wire_id`)."""
    message_id, _, rest = value.partition(".")
    attempt, _, _ = rest.partition(".")
    return message_id, int(attempt) if attempt.isdigit() and 0 < int(attempt) < 1000 else 1


def mobile_message(unit: DispatchUnit, now: datetime, otp_keys: OtpKeys | None = None) -> dict[str, Any]:
    """A `MobileMessage` (§4.3): what the app sends, as its GatewayApi reads it (a one-time
    password's sealed SMS opened, as the bridge opens it: gateway.otp.keys)."""
    m = unit.message
    numbers = tuple(m.recipients[i].phone_number for i in unit.recipient_indices)
    text, encrypted = m.text, m.is_encrypted
    if text is not None and text.startswith(SEALED_PREFIX):
        text, encrypted = opened_otp(otp_keys, text, numbers)
    out: dict[str, Any] = {
        "id": wire_id(unit),
        "phoneNumbers": list(numbers),
        "withDeliveryReport": m.with_delivery_report,
        "state": "Pending",
        "createdAt": iso(m.created_at),
    }
    if text is not None:
        out["message"] = text
        out["textMessage"] = {"text": text}
    else:
        out["dataMessage"] = {"data": data_field(m), "port": m.port}
    if encrypted:
        out["isEncrypted"] = True
    if unit.sim:
        out["simNumber"] = unit.sim
    if m.priority:
        out["priority"] = m.priority
    if m.valid_until is not None:
        out["validUntil"] = iso(m.valid_until)
        out["ttl"] = max(int((m.valid_until - now).total_seconds()), 0)
    return out


def cancelling(message_id: str, numbers: list[str]) -> dict[str, Any]:
    """A message the app must not send (cancelled or expired after it was handed over)."""
    return {"id": message_id, "phoneNumbers": numbers, "state": "Cancelling", "withDeliveryReport": False}


@dataclass(frozen=True)
class Report:
    """One item of a PATCH /message: a message's state as the app saw it."""

    message_id: str
    attempt: int
    state: str
    recipients: tuple[tuple[str, str, str], ...]  # (number as the app knows it, state, error)


def parse_reports(body: Any) -> list[Report]:
    """PATCH /message's body; InvalidArgument names the first wrong field."""
    if not isinstance(body, list):
        raise InvalidArgument("body", "must be a JSON array of message states")
    if len(body) > 1000:
        raise InvalidArgument("body", "at most 1000 message states per request")
    out = []
    for i, item in enumerate(body):
        if not isinstance(item, dict):
            raise InvalidArgument(f"[{i}]", "must be an object")
        wid, state = item.get("id"), item.get("state")
        if not isinstance(wid, str) or not 1 <= len(wid) <= 128:
            raise InvalidArgument(f"[{i}].id", "must be a message id")
        if state not in _KNOWN:
            raise InvalidArgument(f"[{i}].state", f"one of {', '.join(sorted(_KNOWN))}")
        rcps = item.get("recipients") or []
        if not isinstance(rcps, list) or len(rcps) > _MAX_NUMBERS:
            raise InvalidArgument(f"[{i}].recipients", f"must be a list of at most {_MAX_NUMBERS}")
        recipients = []
        for j, r in enumerate(rcps):
            field = f"[{i}].recipients[{j}]"
            if not isinstance(r, dict) or not isinstance(r.get("phoneNumber"), str):
                raise InvalidArgument(f"{field}.phoneNumber", "must be a string")
            if r.get("state") not in _KNOWN:
                raise InvalidArgument(f"{field}.state", f"one of {', '.join(sorted(_KNOWN))}")
            error = r.get("error")
            recipients.append((r["phoneNumber"], r["state"], error if isinstance(error, str) else ""))
        states = item.get("states")
        if states is not None and not isinstance(states, dict):
            raise InvalidArgument(f"[{i}].states", "must be an object of state -> time")
        for name, at in (states or {}).items():
            parse_time(at, f"[{i}].states.{name}")  # a Gson time; smsgw keeps its own clock's
        message_id, attempt = parse_wire_id(wid)
        out.append(Report(message_id, attempt, state, tuple(recipients)))
    return out


def _same_number(a: str, b: str) -> bool:
    """The app may report a number without its `+` (the Go server adds it back)."""
    return a == b or a.lstrip("+") == b.lstrip("+")


def receipts(report: Report, numbers: list[tuple[int, str]]) -> list[ReceiptUpdate]:
    """A report as smsgw receipts for the message's recipients `numbers` ((index, number) of
    those at the reported attempt). Forward only and idempotent, like every receipt: the
    repository ignores what goes backwards or was applied already."""
    per: list[tuple[int, str, str]] = []
    for number, state, error in report.recipients:
        per += [(i, state, error) for i, n in numbers if _same_number(n, number)]
    if not per:  # no recipient named (or none matched): the overall state stands for all
        per = [(i, report.state, "") for i, _ in numbers]
    out: list[ReceiptUpdate] = []
    held = tuple(i for i, state, _ in per if state in _REPORTED)
    if held:
        out.append(ReceiptUpdate(report.message_id, State.ACCEPTED, held[0], recipient_indices=held, attempt=report.attempt))
    for index, state, error in per:
        target = _REPORTED.get(state)
        if target in (State.SENT, State.DELIVERED):
            out.append(ReceiptUpdate(report.message_id, target, index, attempt=report.attempt))
        elif target is State.FAILED:
            out.append(ReceiptUpdate(
                report.message_id, State.FAILED, index, error=error[:500], attempt=report.attempt,
                failure_class="generic_failure",
            ))
    return out


def sims(body: Any, field: str = "simCards") -> tuple[SimRecord, ...] | None:
    """The app's SIM cards (slotIndex 0-based, simNumber 1-based) as smsgw's (slot 1-based);
    None when absent."""
    if body is None:
        return None
    if not isinstance(body, list) or len(body) > 8:
        raise InvalidArgument(field, "must be a list of at most 8 SIM cards")
    out = []
    for i, card in enumerate(body):
        if not isinstance(card, dict):
            raise InvalidArgument(f"{field}[{i}]", "must be an object")
        number = card.get("simNumber")
        if number is None and isinstance(card.get("slotIndex"), int):
            number = card["slotIndex"] + 1
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 8:
            raise InvalidArgument(f"{field}[{i}].simNumber", "must be an integer 1..8")
        carrier = card.get("carrierName")
        out.append(SimRecord(number, carrier[:64] if isinstance(carrier, str) else ""))
    return tuple(sorted({s.slot: s for s in out}.values(), key=lambda s: s.slot))
