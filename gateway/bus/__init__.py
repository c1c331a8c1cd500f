"""The bus: small events between the gateway (asyncio) and the bridge (trio). Ids only, never bodies."""

from gateway.bus.local import Bus, LocalBus

__all__ = ["Bus", "LocalBus"]
