"""Flow control: the set of Delivers in flight against a window.

DESIGN, "Phone protocol": never more unaccepted Delivers in flight than the
window the phone advertised. Both sides keep one :class:`FlowWindow`; the
session decides when an id enters and leaves it (see ``session.py``).
"""

from __future__ import annotations

__all__ = ["MAX_WINDOW", "FlowWindow"]

#: The largest window a phone may advertise (``Hello.window`` is 1..1000).
MAX_WINDOW = 1000


class FlowWindow:
    """Message ids in flight, bounded by a window.

    The window may be 0 (not negotiated yet), in which case nothing fits.
    This class does not raise on overflow: the session turns a full window
    into ``InvalidState`` (our bug) or ``WINDOW_EXCEEDED`` (the peer's).
    """

    __slots__ = ("_ids", "window")

    def __init__(self, window: int = 0) -> None:
        self.window = window
        self._ids: set[str] = set()

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._ids

    def __repr__(self) -> str:
        return f"FlowWindow(window={self.window}, in_flight={len(self._ids)})"

    @property
    def ids(self) -> frozenset[str]:
        """A snapshot of the ids in flight."""
        return frozenset(self._ids)

    @property
    def available(self) -> int:
        """How many more ids fit in the window right now."""
        return max(0, self.window - len(self._ids))

    def add(self, message_id: str) -> bool:
        """Put ``message_id`` in flight; return False if it already was."""
        if message_id in self._ids:
            return False
        self._ids.add(message_id)
        return True

    def discard(self, message_id: str) -> bool:
        """Take ``message_id`` out of flight; return False if it was not in flight."""
        if message_id not in self._ids:
            return False
        self._ids.remove(message_id)
        return True
