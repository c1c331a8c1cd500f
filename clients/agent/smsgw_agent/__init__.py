"""The reference phone: a device agent speaking the smsgw phone protocol.

``PhoneAgent`` holds one WebSocket session to the bridge and sends what it is
given through a modem (``SimulatedModem`` for tests and load); ``Backoff``
spaces its reconnects (RELIABILITY 8). ``smsgw simulate`` runs many of them
(``smsgw_agent.simulator``).
"""

from __future__ import annotations

from .agent import DEFAULT_SIMS, STOP_CLOSE_CODES, AgentStatistics, PhoneAgent
from .backoff import Backoff
from .modem import GENERIC_FAILURE, ModemOptions, SimulatedModem

__all__ = [
    "DEFAULT_SIMS",
    "GENERIC_FAILURE",
    "STOP_CLOSE_CODES",
    "AgentStatistics",
    "Backoff",
    "ModemOptions",
    "PhoneAgent",
    "SimulatedModem",
]
