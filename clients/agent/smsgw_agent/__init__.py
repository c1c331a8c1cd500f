"""The reference phone: a device agent speaking the smsgw phone protocol.

``PhoneAgent`` holds one WebSocket session to the bridge and sends what it is
given through a modem (``SimulatedModem`` for tests and load: multipart sends,
Android's per-app limit, failures on demand); ``Backoff`` spaces its
reconnects (RELIABILITY 8). ``smsgw simulate`` runs many of them
(``smsgw_agent.simulator``).
"""

from __future__ import annotations

from .agent import DEFAULT_SIMS, NO_SUCH_SIM, STOP_CLOSE_CODES, AgentStatistics, PhoneAgent, RecipientKey
from .backoff import Backoff
from .modem import (
    ANDROID_LIMIT_PARTS,
    ANDROID_LIMIT_WINDOW,
    GENERIC_FAILURE,
    LimitDialog,
    ModemOptions,
    PartSent,
    SendResult,
    SimulatedModem,
    max_parts_in_window,
)

__all__ = [
    "ANDROID_LIMIT_PARTS",
    "ANDROID_LIMIT_WINDOW",
    "DEFAULT_SIMS",
    "GENERIC_FAILURE",
    "NO_SUCH_SIM",
    "STOP_CLOSE_CODES",
    "AgentStatistics",
    "Backoff",
    "LimitDialog",
    "ModemOptions",
    "PartSent",
    "PhoneAgent",
    "RecipientKey",
    "SendResult",
    "SimulatedModem",
    "max_parts_in_window",
]
