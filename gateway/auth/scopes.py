"""Scopes, and the one table that says which scope each RPC needs (DESIGN "Security").

`RPC_SCOPES` names every RPC of every smsgw service. The interceptor refuses a method that is
missing from it (fail closed), and a test walks the service descriptors so that a new RPC
without a scope fails the suite. `docs/security.md` prints the same table.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

__all__ = ["Scope", "ALL_SCOPES", "PUBLIC", "RPC_SCOPES", "parse_scopes"]


class Scope(StrEnum):
    MESSAGES_SEND = "messages:send"
    MESSAGES_READ = "messages:read"
    MESSAGES_LIST = "messages:list"
    MESSAGES_EXPORT = "messages:export"
    DEVICES_LIST = "devices:list"
    DEVICES_WRITE = "devices:write"
    DEVICES_DELETE = "devices:delete"
    WEBHOOKS_LIST = "webhooks:list"
    WEBHOOKS_WRITE = "webhooks:write"
    WEBHOOKS_DELETE = "webhooks:delete"
    SETTINGS_READ = "settings:read"
    SETTINGS_WRITE = "settings:write"
    LOGS_READ = "logs:read"
    TOKENS_MANAGE = "tokens:manage"
    OTP_SEND = "otp:send"
    OTP_CHECK = "otp:check"


ALL_SCOPES: Final = frozenset(Scope)

PUBLIC: Final = None
"""The RPC carries its own credential (Basic, a refresh token) or none, not an access token."""

RPC_SCOPES: Final[dict[str, Scope | None]] = {
    "/smsgw.v1.MessageService/SendMessage": Scope.MESSAGES_SEND,
    "/smsgw.v1.MessageService/SendMessages": Scope.MESSAGES_SEND,
    "/smsgw.v1.MessageService/CancelMessage": Scope.MESSAGES_SEND,
    "/smsgw.v1.MessageService/RescheduleMessage": Scope.MESSAGES_SEND,
    "/smsgw.v1.MessageService/GetMessage": Scope.MESSAGES_READ,
    "/smsgw.v1.MessageService/WatchMessages": Scope.MESSAGES_READ,
    "/smsgw.v1.MessageService/ListMessages": Scope.MESSAGES_LIST,
    "/smsgw.v1.MessageService/ExportMessages": Scope.MESSAGES_EXPORT,
    "/smsgw.v1.DeviceService/ListDevices": Scope.DEVICES_LIST,
    "/smsgw.v1.DeviceService/CreatePairingCode": Scope.DEVICES_WRITE,
    "/smsgw.v1.DeviceService/DeleteDevice": Scope.DEVICES_DELETE,
    "/smsgw.v1.DeviceService/GetDeviceSettings": Scope.SETTINGS_READ,
    "/smsgw.v1.DeviceService/UpdateDeviceSettings": Scope.SETTINGS_WRITE,
    "/smsgw.v1.InboundService/ListInbound": Scope.MESSAGES_LIST,
    "/smsgw.v1.InboundService/WatchInbound": Scope.MESSAGES_READ,
    "/smsgw.v1.WebhookService/CreateWebhook": Scope.WEBHOOKS_WRITE,
    "/smsgw.v1.WebhookService/TestWebhook": Scope.WEBHOOKS_WRITE,
    "/smsgw.v1.WebhookService/ReplayWebhookDelivery": Scope.WEBHOOKS_WRITE,
    "/smsgw.v1.WebhookService/EnableWebhook": Scope.WEBHOOKS_WRITE,
    "/smsgw.v1.WebhookService/RotateWebhookSecret": Scope.WEBHOOKS_WRITE,
    "/smsgw.v1.WebhookService/ListWebhooks": Scope.WEBHOOKS_LIST,
    "/smsgw.v1.WebhookService/ListWebhookDeliveries": Scope.WEBHOOKS_LIST,
    "/smsgw.v1.WebhookService/DeleteWebhook": Scope.WEBHOOKS_DELETE,
    "/smsgw.v1.AuthService/CreateAccount": PUBLIC,
    "/smsgw.v1.AuthService/IssueToken": PUBLIC,
    "/smsgw.v1.AuthService/RefreshToken": PUBLIC,
    "/smsgw.v1.AuthService/RevokeToken": Scope.TOKENS_MANAGE,
    "/smsgw.v1.AuditService/ListAuditEvents": Scope.LOGS_READ,
    "/smsgw.v1.OtpService/StartVerification": Scope.OTP_SEND,
    "/smsgw.v1.OtpService/CancelVerification": Scope.OTP_SEND,
    "/smsgw.v1.OtpService/CheckVerification": Scope.OTP_CHECK,
    "/smsgw.v1.OtpService/GetVerification": Scope.OTP_CHECK,
}


def parse_scopes(raw: str | list[str] | tuple[str, ...]) -> frozenset[Scope]:
    """Scopes from a space-separated string or a list; ValueError names an unknown one."""
    names = raw.split() if isinstance(raw, str) else [n for item in raw for n in item.split()]
    out = set()
    for name in names:
        try:
            out.add(Scope(name))
        except ValueError:
            raise ValueError(f"unknown scope {name!r}") from None
    return frozenset(out)
