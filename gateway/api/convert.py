"""Domain records -> protobuf messages. The only place API protobuf classes are built."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from smsgw.v1 import devices_pb2, inbound_pb2, messages_pb2, webhooks_pb2

from gateway.devices.records import DeviceRecord
from gateway.inbound.records import InboundEventRecord, InboundRecord
from gateway.messages.pacing import DevicePacing, SimLimits
from gateway.messages.records import EventRecord, MessageRecord
from gateway.webhooks.records import AttemptRecord, DeliveryRecord, WebhookRecord

__all__ = [
    "timestamp", "message_to_pb", "event_to_pb", "device_to_pb", "pacing_to_pb", "sim_limits_to_pb",
    "webhook_to_pb", "attempt_to_pb", "delivery_to_pb", "inbound_to_pb", "inbound_event_to_pb",
]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(t: datetime | None) -> Timestamp | None:
    """A Timestamp (naive = UTC), computed as `Timestamp.FromDatetime` does but at a third of
    its cost: a SendMessages answer converts several per message."""
    if t is None:
        return None
    d = (t if t.tzinfo else t.replace(tzinfo=UTC)) - _EPOCH
    return Timestamp(seconds=d.days * 86400 + d.seconds, nanos=d.microseconds * 1000)


def _put_body(
    out: messages_pb2.Message | inbound_pb2.InboundMessage, text: str | None, data: bytes | None, port: int
) -> None:
    """The `content` oneof: a text, or data to a port (an empty data message stays data)."""
    if text is not None:
        out.text_message.text = text
    else:
        out.data_message.data = data or b""
        out.data_message.port = port


def message_to_pb(m: MessageRecord) -> messages_pb2.Message:
    out = messages_pb2.Message(
        id=m.id,
        idempotency_key=m.idempotency_key,
        device_id=m.device_id or "",
        sim_number=m.sim_number,
        is_encrypted=m.is_encrypted,
        priority=m.priority,
        valid_until=timestamp(m.valid_until),
        with_delivery_report=m.with_delivery_report,
        state=int(m.state),
        recipients=[
            messages_pb2.Recipient(
                phone_number=r.phone_number,
                state=int(r.state),
                error=r.error,
                updated_at=timestamp(r.updated_at),
                attempt=r.attempt,
                last_error=r.last_error,
                next_attempt_at=timestamp(r.next_attempt_at),
                sim_number=r.sim,
                parts_total=m.parts,
                parts_sent=r.parts_sent,
                parts_delivered=r.parts_delivered,
            )
            for r in m.recipients
        ],
        created_at=timestamp(m.created_at),
        updated_at=timestamp(m.updated_at),
        parts=m.parts,
        encoding=m.encoding,
        schedule_at=timestamp(m.schedule_at),
        attempts=m.attempts,
        last_error=m.last_error,
        next_attempt_at=timestamp(m.next_attempt_at),
    )
    _put_body(out, m.text, m.data, m.port)
    return out


def event_to_pb(e: EventRecord) -> messages_pb2.MessageEvent:
    return messages_pb2.MessageEvent(
        event_id=e.id,
        message_id=e.message_id,
        recipient_index=e.recipient_index,
        phone_number=e.phone_number,
        state=int(e.state),
        message_state=int(e.message_state),
        error=e.error,
        time=timestamp(e.created_at),
    )


def inbound_to_pb(r: InboundRecord) -> inbound_pb2.InboundMessage:
    """Also the `inbound` record of webhook payloads (gateway.webhooks.payloads.proto_json)."""
    out = inbound_pb2.InboundMessage(
        id=r.id,
        device_id=r.device_id,
        sim_number=r.sim,
        sender=r.sender,
        is_encrypted=r.is_encrypted,
        received_at=timestamp(r.received_at),
        created_at=timestamp(r.created_at),
        truncated=r.truncated,
    )
    _put_body(out, r.text, r.data, r.port)
    return out


def inbound_event_to_pb(e: InboundEventRecord) -> inbound_pb2.InboundEvent:
    return inbound_pb2.InboundEvent(event_id=e.id, message=inbound_to_pb(e.inbound))


def device_to_pb(d: DeviceRecord) -> devices_pb2.Device:
    return devices_pb2.Device(
        id=d.id,
        name=d.name,
        online=d.online,
        last_seen=timestamp(d.last_seen),
        sims=[devices_pb2.Sim(slot=s.slot, operator_name=s.operator_name, country_iso=s.country_iso) for s in d.sims],
        app_version=d.app_version,
        created_at=timestamp(d.created_at),
        pending=d.pending,
        connected_with_token=d.connected_with_token,
        wakeable=d.wakeable,
        last_woken_at=timestamp(d.last_woken_at),
        push_token_invalid=d.push_token_invalid,
    )


def sim_limits_to_pb(slot: int, x: SimLimits) -> devices_pb2.SimPacing:
    return devices_pb2.SimPacing(
        slot=slot,
        parts_per_minute=x.parts_per_minute,
        min_interval_ms=x.min_interval_ms,
        parts_per_hour=x.parts_per_hour,
        parts_per_day=x.parts_per_day,
        recipients_per_month=x.recipients_per_month,
    )


def pacing_to_pb(device_id: str, pacing: DevicePacing, customized: bool) -> devices_pb2.DeviceSettings:
    return devices_pb2.DeviceSettings(
        device_id=device_id,
        default_pacing=sim_limits_to_pb(0, pacing.default),
        sims=[sim_limits_to_pb(slot, x) for slot, x in sorted(pacing.sims.items())],
        phone_parts_per_minute=pacing.phone_parts_per_minute,
        priority_bypass=pacing.priority_bypass,
        customized=customized,
    )


def webhook_to_pb(w: WebhookRecord) -> webhooks_pb2.Webhook:
    return webhooks_pb2.Webhook(
        id=w.id,
        url=w.url,
        events=[str(e) for e in w.events],
        device_id=w.device_id,
        state=int(w.state),  # type: ignore[arg-type]
        disabled_reason=w.disabled_reason,
        failing_since=timestamp(w.failing_since),
        last_success_at=timestamp(w.last_success_at),
        created_at=timestamp(w.created_at),
        pending_deliveries=w.pending_deliveries,
    )


def attempt_to_pb(a: AttemptRecord) -> webhooks_pb2.WebhookAttempt:
    return webhooks_pb2.WebhookAttempt(
        attempt=a.attempt, time=timestamp(a.at), status_code=a.status_code, latency_ms=a.latency_ms,
        error=a.error, delivery_id=a.delivery_id,
    )


def delivery_to_pb(d: DeliveryRecord) -> webhooks_pb2.WebhookDelivery:
    return webhooks_pb2.WebhookDelivery(
        id=d.id,
        webhook_id=d.webhook_id,
        event=d.event,
        state=int(d.state),  # type: ignore[arg-type]
        attempts=d.attempts,
        next_attempt_at=timestamp(d.next_attempt_at),
        created_at=timestamp(d.created_at),
        last_error=d.last_error,
        attempt_log=[attempt_to_pb(a) for a in d.attempt_log],
    )
