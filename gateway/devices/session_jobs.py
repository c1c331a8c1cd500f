"""A phone session's open and close, each as ONE write job (issue 15 item 7).

Opening used to cost three write jobs and two reads before a first dispatch round that
loaded the queue again in a fourth; closing cost three write jobs. Here each is one
`Database.group` job, so it shares its commit with whatever else is queued at that moment
(a reconnect storm opens hundreds of sessions in a few commits):

- `open_device_session`: the device's online flag, with the token re-check, app version
  and SIMs (`take_online`: DELETED / TOKEN_REPLACED change nothing and end the job), then
  what `MessageRepository.open_session` does (held recipients ACCEPTED, what older sessions
  dispatched back to PENDING, unrouted messages adopted), then the phone's queue loaded
  with its pacing (expired messages taken first, as a round's fresh load does) and what the
  phone must Drop (flagged ones, and held ones that ended CANCELLED or EXPIRED). The
  session's first dispatch round plans on that queue instead of loading it again.
- `close_device_session`: the device offline unless a newer session took over, what the
  session dispatched and the phone did not accept back to PENDING, and (the registry's last
  session of the device, now offline) its never-dispatched messages rerouted.

The jobs only change the database and return what they read (a failed group re-runs each
job alone); the caller tells the bus and the registry afterwards. Each function returns the
job's future: the bridge waits on it from its trio loop (device_bridge.jobs.wait_job), with
no worker thread between the two.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime

from gateway.devices.records import SimRecord
from gateway.devices.repository import DeviceRepository, Online, take_offline, take_online
from gateway.messages.pacing import DevicePacing
from gateway.messages.queue import DeviceQueue
from gateway.messages.records import HeldRecipient
from gateway.messages.repository import MessageRepository, to_utc
from gateway.messages.rows import Writes, in_writes
from gateway.types import State

__all__ = ["OpenedSession", "open_device_session", "close_device_session"]


@dataclass
class OpenedSession:
    """What the session-open job did and read. Only `online` is set unless it is ONLINE."""

    online: Online
    woken_at: datetime | None = None  # the wake-up push that brought the phone back (take_online)
    pacing: DevicePacing | None = None  # the phone's pacing, for the Welcome
    queue: DeviceQueue | None = None  # the phone's dispatch queue, for the first round
    drops: dict[str, State] = field(default_factory=dict)  # messages the phone must drop


def open_device_session(
    devices: DeviceRepository,
    messages: MessageRepository,
    *,
    owner_id: str,
    device_id: str,
    session_id: str,
    token_hash: str | None,
    app_version: str,
    sims: tuple[SimRecord, ...],
    held: Iterable[HeldRecipient],
    held_ids: Collection[str],
    now: datetime,
    with_token: bool = True,
    bridge_id: str = "",
    push_token: str = "",
) -> Future[OpenedSession]:
    """Open a phone's session in one write job (see the module docstring). `held`: the
    recipients the phone says it holds; `held_ids`: every message it says it holds;
    `bridge_id`, `push_token`: the bridge process holding the session, the phone's FCM token
    (take_online).
    InvalidArgument on `device_id` for an unknown device."""
    assert devices.db is messages.db, "one database, one transaction"
    now, held = to_utc(now), list(held)

    def tx(s: Writes) -> OpenedSession:
        taken = take_online(
            s, device_id, session_id, token_hash=token_hash, app_version=app_version, sims=sims, now=now,
            with_token=with_token, bridge_id=bridge_id, push_token=push_token,
        )
        if taken.online is not Online.ONLINE:
            return OpenedSession(taken.online)
        messages.open_session_in(s, owner_id, device_id, session_id, held, now)
        queue, drops = messages.load_session_in(s, device_id, held_ids, now)
        pacing = queue.pacing if queue is not None else messages.base_pacing
        return OpenedSession(taken.online, taken.woken_at, pacing, queue, drops)

    return messages.db.group_future(in_writes(tx))


def close_device_session(
    devices: DeviceRepository,
    messages: MessageRepository,
    *,
    owner_id: str,
    device_id: str,
    session_id: str,
    last: bool,
    now: datetime,
) -> Future[set[str]]:
    """Close a phone's session in one write job (see the module docstring). `last`: the
    registry held no newer session of the device. The job returns the devices its messages
    were rerouted to."""
    assert devices.db is messages.db, "one database, one transaction"
    now = to_utc(now)

    def tx(s: Writes) -> set[str]:
        # The device row first, as the open does: on PostgreSQL an open and a close of one
        # device on two bridges take their locks in the same order.
        offline = take_offline(s, device_id, session_id, now)
        messages.close_session_in(s, session_id, now)
        return messages.reroute_from_in(s, owner_id, device_id) if last and offline else set()

    return messages.db.group_future(in_writes(tx))
