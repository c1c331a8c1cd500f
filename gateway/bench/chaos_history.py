"""The history of a chaos run: what the clients, the watch, the phones and the modems saw.

The checker (`chaos_check`) judges a run from this record alone, so everything it needs is
here and nothing it needs is read from the server's insides. Times are `time.monotonic()`;
the checker never compares them across sources, they are for people reading a failure.
A history is written as one JSON object a line (`save`/`load`), so a failed run can be kept,
read and cut down by hand.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

__all__ = [
    "Call", "WatchEvent", "PhoneFrame", "ModemSend", "Nemesis", "FinalRecipient", "FinalMessage", "History",
]

OK, FAIL, INFO = "ok", "fail", "info"  # Call.outcome: took effect / did not / unknown (Jepsen's info)


@dataclass(frozen=True, slots=True)
class Call:
    """One client call and its answer. `op` is "send" (key names the idempotency key) or
    "cancel" (message_id names the message). An `info` outcome (UNAVAILABLE, deadline) may or
    may not have taken effect."""

    op: str
    key: str
    message_id: str  # the answer's id (send ok) or the cancelled message
    outcome: str
    code: str = ""  # the gRPC status name when not ok
    recipients: int = 0
    invoked: float = 0.0
    completed: float = 0.0


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One MessageEvent as a stream handed it to the client, in arrival order."""

    event_id: int
    message_id: str
    recipient_index: int
    state: int  # smsgw.v1.State
    error: str = ""


@dataclass(frozen=True, slots=True)
class PhoneFrame:
    """A frame a phone received (`deliver`, `drop`, `welcome`) or a session end (`closed`)."""

    phone: str
    kind: str
    message_id: str = ""
    recipient_indices: tuple[int, ...] = ()
    attempt: int = 0
    t: float = 0.0


@dataclass(frozen=True, slots=True)
class ModemSend:
    """One send attempt a modem made for one recipient: how many parts went out, and whether it
    failed after them (`failure` is the class name, "" = every part went out)."""

    phone: str
    message_id: str
    recipient_index: int
    attempt: int
    parts: int
    parts_sent: int
    failure: str = ""


@dataclass(frozen=True, slots=True)
class Nemesis:
    kind: str  # kill9, pause, cut, phone_kill
    started: float
    ended: float
    detail: str = ""


@dataclass(frozen=True, slots=True)
class FinalRecipient:
    state: int
    attempt: int
    parts_sent: int


@dataclass(frozen=True, slots=True)
class FinalMessage:
    """A message as ListMessages showed it after the run settled."""

    id: str
    idempotency_key: str
    state: int
    recipients: tuple[FinalRecipient, ...]


@dataclass
class History:
    """Everything one run recorded. `log` is the event log replayed from event 0 after the run
    (the ground truth of what changed); `watch` is what the stream opened before the run got."""

    calls: list[Call] = field(default_factory=list)
    watch: list[WatchEvent] = field(default_factory=list)
    frames: list[PhoneFrame] = field(default_factory=list)
    modem: list[ModemSend] = field(default_factory=list)
    nemeses: list[Nemesis] = field(default_factory=list)
    final: list[FinalMessage] = field(default_factory=list)
    log: list[WatchEvent] = field(default_factory=list)
    watch_complete: bool = True  # False when the live stream ended early (the checker says so)

    _KINDS: ClassVar[dict[str, type]] = {"call": Call, "watch": WatchEvent, "frame": PhoneFrame, "modem": ModemSend,
              "nemesis": Nemesis, "final": FinalMessage, "log": WatchEvent}
    _LISTS: ClassVar[dict[str, str]] = {"call": "calls", "watch": "watch", "frame": "frames", "modem": "modem",
              "nemesis": "nemeses", "final": "final", "log": "log"}

    def save(self, path: Path) -> None:
        with open(path, "w") as out:
            out.write(json.dumps({"record": "meta", "watch_complete": self.watch_complete}) + "\n")
            for kind, name in self._LISTS.items():
                for record in getattr(self, name):
                    out.write(json.dumps({"record": kind, **asdict(record)}) + "\n")

    @classmethod
    def load(cls, path: Path) -> History:
        history = cls()
        for line in path.read_text().splitlines():
            row: dict[str, Any] = json.loads(line)
            kind = row.pop("record")
            if kind == "meta":
                history.watch_complete = bool(row["watch_complete"])
                continue
            getattr(history, cls._LISTS[kind]).append(_build(cls._KINDS[kind], row))
        return history


def _build(kind: type, row: dict[str, Any]) -> Any:
    """A record from its JSON row (tuples and nested recipients restored)."""
    values = {}
    for f in fields(kind):
        value = row[f.name]
        if f.name == "recipients" and kind is FinalMessage:
            value = tuple(FinalRecipient(**r) for r in value)
        elif isinstance(value, list):
            value = tuple(value)
        values[f.name] = value
    return kind(**values)
