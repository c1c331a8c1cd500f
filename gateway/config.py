"""One typed, frozen settings tree: defaults in code, an optional YAML file, then
`SMSGW_SECTION__KEY` environment overrides (e.g. `SMSGW_BRIDGE__PING_INTERVAL=5`).

Loaded once by the CLI and passed down; nothing reads it from a global.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.addresses import split_hostport
from gateway.config_errors import ConfigError, Sources, explain_validation, load_yaml
from gateway.messages.pacing import ANDROID_PARTS_PER_MINUTE

__all__ = [
    "Settings",
    "GatewaySettings",
    "JwtSettings",
    "GrpcSettings",
    "BridgeSettings",
    "DatabaseSettings",
    "MetricsSettings",
    "LimitsSettings",
    "JobsSettings",
    "SchedulerSettings",
    "WebhookSettings",
    "load_settings",
    "describe_error",
    "ConfigError",
]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GrpcSettings(_Section):
    listen: str = "127.0.0.1:50051"
    # TLS (RELIABILITY 25): both files, or neither (plaintext, loopback only unless gateway.insecure).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # Mutual TLS: client certificates must chain to this CA.
    tls_client_ca_file: Path | None = None
    # Graceful stop: in-flight RPCs get this long after SIGTERM.
    shutdown_grace: float = 5.0
    max_receive_message_length: int = 4 * 1024 * 1024


class BridgeSettings(_Section):
    listen: str = "127.0.0.1:8765"
    # WSS: both files, or neither (ws://, loopback only unless gateway.insecure).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # websockets' names and defaults (RELIABILITY 7): a silent phone is dead <= 40 s after its last frame.
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    close_timeout: float = 10.0
    open_timeout: float = 10.0
    hello_timeout: float = 10.0
    max_size: int = 256 * 1024
    max_window: int = 1000
    # Sessions being opened at once; past it a phone gets 503 + Retry-After (a reconnect storm).
    max_opening: int = Field(default=256, gt=0)
    shutdown_grace: float = 5.0
    # `smsgw bridge` only (issue 16): its heartbeat, and how long after the last one the
    # worker takes its phones offline when its lock is free too (device_bridge/lease.py).
    heartbeat_interval: float = Field(default=2.0, gt=0)
    lease_grace: float = Field(default=10.0, gt=0)
    # The URL phones reach the bridge at, when it is not the listen address (a TLS proxy, a
    # wildcard listen): what `smsgw devices pair` prints and QR-encodes. "" = the bound address.
    public_url: str = ""

    @field_validator("public_url")
    @classmethod
    def _phone_url(cls, value: str) -> str:
        """A URL a phone can open, checked at load: a typo would end up in every QR code."""
        if value:
            try:
                parts = urlsplit(value)
                parts.port  # noqa: B018 — raises ValueError for a bad port
            except ValueError:
                raise ValueError("not a URL (ws://HOST:PORT/device/v1 or wss://...)") from None
            if parts.scheme not in ("ws", "wss") or not parts.hostname:
                raise ValueError("must be a ws:// or wss:// URL with a host (e.g. wss://sms.example.com/device/v1)")
        return value


class DatabaseSettings(_Section):
    # Empty = sqlite file in the data directory.
    url: str = ""
    # FULL: an acknowledged SendMessage survives power loss (RELIABILITY 6). NORMAL is an opt-in.
    sqlite_synchronous: str = Field(default="FULL", pattern="^(FULL|NORMAL)$")

    @field_validator("url")
    @classmethod
    def _parses(cls, value: str) -> str:
        """A typo is a configuration error (exit 2, the key named, the URL and its password
        not shown), not a traceback when the engine is made."""
        if value:
            from sqlalchemy.engine import make_url
            from sqlalchemy.exc import ArgumentError

            try:
                make_url(value)
            except (ArgumentError, ValueError):
                raise ValueError("not a database URL (dialect+driver://user:password@host:port/name)") from None
        return value


class MetricsSettings(_Section):
    listen: str = "127.0.0.1:9464"


class GatewaySettings(_Section):
    # public: anyone may CreateAccount and a pairing code alone registers a phone.
    # private: accounts come from `smsgw users add`, and a phone also needs private_token.
    mode: Literal["public", "private"] = "public"
    private_token: str = ""
    # Serve plaintext gRPC / ws:// on a non-loopback address (behind a TLS proxy, say).
    insecure: bool = False

    @model_validator(mode="after")
    def _private_needs_token(self) -> GatewaySettings:
        if self.mode == "private" and len(self.private_token) < 32:
            raise ValueError("gateway.private_token must be at least 32 characters in private mode")
        return self


class JwtSettings(_Section):
    # HS256: `secret` (>= 32 characters; empty = a random one kept in DATA_DIR/jwt.secret).
    # ES256: `private_key_file` (PEM, P-256) signs; its public key verifies.
    algorithm: Literal["HS256", "ES256"] = "HS256"
    secret: str = ""
    private_key_file: Path | None = None
    # Key rotation (RELIABILITY 19): old keys that still verify, until their tokens expire.
    previous_secrets: tuple[str, ...] = ()
    previous_public_key_files: tuple[Path, ...] = ()
    issuer: str = "smsgw"
    audience: str = "smsgw"
    access_ttl: int = Field(default=15 * 60, gt=0)
    refresh_ttl: int = Field(default=720 * 3600, gt=0)
    max_access_ttl: int = Field(default=24 * 3600, gt=0)
    max_refresh_ttl: int = Field(default=90 * 24 * 3600, gt=0)
    # A refresh token not used for this long is dead even before its exp.
    refresh_inactivity: int = Field(default=7 * 24 * 3600, gt=0)
    # A retry of a just-rotated refresh token within this window gets the same new pair.
    refresh_grace: float = Field(default=10.0, ge=0)
    leeway: float = Field(default=30.0, ge=0, le=30)

    @model_validator(mode="after")
    def _keys(self) -> JwtSettings:
        for secret in (self.secret, *self.previous_secrets):
            if secret and len(secret) < 32:
                raise ValueError("jwt.secret (and each of jwt.previous_secrets) must be at least 32 characters")
        if self.algorithm == "ES256" and self.private_key_file is None:
            raise ValueError("jwt.algorithm ES256 needs jwt.private_key_file (a PEM P-256 key)")
        if self.refresh_ttl <= self.access_ttl:
            raise ValueError("jwt.refresh_ttl must exceed jwt.access_ttl")
        return self


class LimitsSettings(_Section):
    # Token bucket per access token (RELIABILITY 26): sustained requests/s and burst.
    rate_per_token: float = Field(default=20.0, gt=0)
    burst_per_token: int = Field(default=40, gt=0)
    # Unauthenticated RPCs (IssueToken, RefreshToken, CreateAccount) per source address.
    rate_per_source: float = Field(default=5.0, gt=0)
    burst_per_source: int = Field(default=20, gt=0)
    # SMS segments (parts x recipients) an owner may send per UTC day; 0 = no cap.
    daily_segments: int = Field(default=10_000, ge=0)
    # Failed authentications from one address before it is locked out, within the window.
    auth_failures: int = Field(default=10, gt=0)
    auth_failure_window: float = Field(default=300.0, gt=0)
    auth_lockout: float = Field(default=300.0, gt=0)
    max_recipients: int = 100
    max_parts: int = 10
    max_data_bytes: int = 140 * 10
    max_ttl_seconds: int = 30 * 24 * 3600
    max_schedule_seconds: int = 30 * 24 * 3600  # how far ahead schedule_at may be
    max_idempotency_key: int = 128


class SchedulerSettings(_Section):
    """Dispatch pacing defaults (each phone may override them: UpdateDeviceSettings) and retries."""

    # Per SIM (RELIABILITY 27), sliding windows in SMS parts; 0 = no such limit.
    sim_parts_per_minute: int = Field(default=24, ge=0)
    sim_min_interval: float = Field(default=2.5, ge=0)  # seconds between two sends of one SIM
    sim_parts_per_hour: int = Field(default=0, ge=0)
    sim_parts_per_day: int = Field(default=0, ge=0)
    sim_recipients_per_month: int = Field(default=0, ge=0)  # distinct numbers per calendar month
    # All SIMs of a phone together: Android allows 30 parts per 60 s per app; a margin
    # absorbs the network's jitter between our dispatch and the phone's send.
    phone_parts_per_minute: int = Field(default=27, ge=0, le=ANDROID_PARTS_PER_MINUTE)  # 0 = no cap (not an Android phone)
    # Priority >= 100 may skip the SIM limits (never the phone's) on phones that allow it.
    priority_bypass: bool = False
    # Retries of LIMIT_EXCEEDED / NO_SERVICE / RADIO_OFF failures: attempts in all, and the
    # backoff before attempt n+1: retry_base * 4**(n-1), at most retry_max, +-20 % jitter.
    max_attempts: int = Field(default=4, ge=1, le=20)
    retry_base: float = Field(default=30.0, gt=0)
    retry_max: float = Field(default=3600.0, gt=0)


# RELIABILITY 12: attempts at 0, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h (~75.6 h).
_WEBHOOK_RETRY_DELAYS = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0)


class WebhookSettings(_Section):
    """Outgoing webhooks (docs/webhooks.md): timeouts, the retry schedule, the SSRF guard."""

    # Seconds before each retry: attempt n+1 comes retry_delays[n-1] after attempt n, +-jitter.
    retry_delays: tuple[float, ...] = Field(default=_WEBHOOK_RETRY_DELAYS, min_length=0, max_length=30)
    jitter: float = Field(default=0.1, ge=0, lt=1)
    timeout: float = Field(default=15.0, gt=0, le=60)  # per attempt, connect to last byte
    retry_after_cap: float = Field(default=3600.0, ge=0)  # a 429/503's Retry-After is honoured up to this
    # A webhook failing without a single success for this long is disabled.
    disable_after: float = Field(default=5 * 24 * 3600.0, gt=0)
    secret_overlap: float = Field(default=24 * 3600.0, ge=0)  # the old secret still signs after a rotation
    concurrency: int = Field(default=16, ge=1, le=256)  # requests in flight at once
    max_per_owner: int = Field(default=20, ge=1)
    retention: float = Field(default=7 * 24 * 3600.0, gt=0)  # finished deliveries are kept this long
    # SSRF guard (RELIABILITY 14). Private mode only: deliver to loopback/private/link-local
    # addresses, and over plain http.
    allow_private_targets: bool = False
    allow_http: bool = False
    ca_file: Path | None = None  # verify receivers against this CA (PEM) instead of the public roots

    @field_validator("retry_delays", mode="before")
    @classmethod
    def _delays_from_text(cls, value: Any) -> Any:
        """SMSGW_WEBHOOKS__RETRY_DELAYS="5,300,1800" (or a YAML/JSON list)."""
        if isinstance(value, str):
            return [float(x) for x in value.strip("[] ").split(",") if x.strip()]
        return value


class FcmSettings(_Section):
    """Wake-up pushes through FCM HTTP v1 for phones whose session is gone (docs/push.md).
    Off while `credentials_file` is unset."""

    credentials_file: Path | None = None  # a Google service-account JSON of the Firebase project
    base_url: str = "https://fcm.googleapis.com"  # FCM's; a stand-in's for tests (loopback may be http)
    grace: float = Field(default=30.0, ge=0)  # after a phone's session ends, before its first push
    min_interval: float = Field(default=300.0, gt=0)  # at most one push per phone this often
    ttl: int = Field(default=60, ge=0, le=2_419_200)  # seconds FCM keeps an undelivered push
    check_interval: float = Field(default=5.0, gt=0)  # how often the worker looks for phones to wake
    concurrency: int = Field(default=16, ge=1, le=256)  # pushes in flight at once

    @property
    def enabled(self) -> bool:
        return self.credentials_file is not None

    @field_validator("base_url")
    @classmethod
    def _https_unless_loopback(cls, value: str) -> str:
        """Pushes carry an OAuth access token: plain http only to this machine (a stand-in)."""
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL, e.g. https://fcm.googleapis.com")
        if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError("must be https (plain http only to a loopback stand-in)")
        return value.rstrip("/")


class SmsgateCompatSettings(_Section):
    """SMSGate's third-party REST API on its own port (docs/smsgate.md); off while `listen` is ""."""

    listen: str = ""  # HOST:PORT; TLS with gRPC's certificate when that is set
    default_region: str = Field(default="RU", pattern="^[A-Z]{2}$")  # numbers without +country: SMSGate's default
    # The mobile API (the SMSGate app as a phone): a ":keepalive" comment on each SSE stream
    # this often, and a phone with no stream and no request for `phone_linger` goes offline.
    sse_keepalive: float = Field(default=15.0, gt=0)
    phone_linger: float = Field(default=60.0, gt=0)

    @field_validator("listen")
    @classmethod
    def _hostport(cls, value: str) -> str:
        if value:
            split_hostport(value)  # ValueError saying what a HOST:PORT is
        return value


class CompatSettings(_Section):
    smsgate: SmsgateCompatSettings = SmsgateCompatSettings()


class JobsSettings(_Section):
    expiry_interval: float = 5.0
    pairing_code_ttl: int = 600


class OtpSettings(_Section):
    """One-time passwords (docs/otp.md): limits, each refusal a RESOURCE_EXHAUSTED with RetryInfo."""

    # The key codes are hashed (HMAC) and their SMS sealed with, >= 32 characters; "" = the one
    # kept in DATA_DIR/otp.secret (made by `smsgw serve` / `smsgw db upgrade`). Every gateway
    # and bridge of a deployment needs the same one.
    secret: str = Field(default="", repr=False)
    max_attempts: int = Field(default=5, ge=1, le=20)  # checks per verification
    resend_cooldown: float = Field(default=30.0, ge=0)  # seconds between two sends of one verification
    sends_per_number: int = Field(default=5, ge=1)  # per number_window, per number
    number_window: float = Field(default=600.0, gt=0)
    sends_per_prefix: int = Field(default=20, ge=1)  # per prefix_window; prefix = the number without its last 4 digits
    prefix_window: float = Field(default=3600.0, gt=0)
    sends_per_owner_per_minute: int = Field(default=60, ge=1)
    # E.164 prefixes allowed ("+44", "+1555"); empty = every destination.
    allowed_prefixes: tuple[str, ...] = ()
    # The SMS-pumping guard: a prefix whose settled verifications of the last pumping_window
    # number at least pumping_min_volume and convert below pumping_min_conversion is refused.
    pumping_window: float = Field(default=3600.0, gt=0)
    pumping_min_volume: int = Field(default=10, ge=1)
    pumping_min_conversion: float = Field(default=0.2, ge=0, le=1)
    priority: int = Field(default=100, ge=-128, le=127)  # of the SMS: >= 100 skips pacing with priority_bypass

    @field_validator("secret")
    @classmethod
    def _long_secret(cls, value: str) -> str:
        if value and len(value) < 32:
            raise ValueError("otp.secret must be at least 32 characters")
        return value

    @field_validator("allowed_prefixes", mode="before")
    @classmethod
    def _prefixes_from_text(cls, value: Any) -> Any:
        """SMSGW_OTP__ALLOWED_PREFIXES="+44,+1555" (or a YAML list)."""
        if isinstance(value, str):
            return tuple(x.strip() for x in value.split(",") if x.strip())
        return value

    @field_validator("allowed_prefixes")
    @classmethod
    def _e164_prefixes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for prefix in value:
            if not (prefix.startswith("+") and prefix[1:].isdigit() and 2 <= len(prefix) <= 16):
                raise ValueError(f"otp.allowed_prefixes: {prefix!r} is not an E.164 prefix like +44")
        return value


class Settings(_Section):
    """The whole tree; build it with `load_settings`."""

    data_dir: Path = Path("smsgw-data")
    gateway: GatewaySettings = GatewaySettings()
    jwt: JwtSettings = JwtSettings()
    grpc: GrpcSettings = GrpcSettings()
    bridge: BridgeSettings = BridgeSettings()
    database: DatabaseSettings = DatabaseSettings()
    metrics: MetricsSettings = MetricsSettings()
    limits: LimitsSettings = LimitsSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    jobs: JobsSettings = JobsSettings()
    webhooks: WebhookSettings = WebhookSettings()
    fcm: FcmSettings = FcmSettings()
    compat: CompatSettings = CompatSettings()
    otp: OtpSettings = OtpSettings()

    @model_validator(mode="after")
    def _webhook_guard_only_private(self) -> Settings:
        """Public mode: anyone may register a webhook, so it always gets the SSRF guard."""
        if self.gateway.mode == "public" and (self.webhooks.allow_private_targets or self.webhooks.allow_http):
            raise ValueError(
                "webhooks.allow_private_targets and webhooks.allow_http need gateway.mode private"
            )
        return self

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.data_dir / 'smsgw.db'}"


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Defaults, then the YAML file, then `SMSGW_SECTION__KEY` variables, then `overrides` (CLI flags)."""
    tree: dict[str, Any] = {}
    lines: dict[tuple[str, ...], int] = {}
    if config_file is not None:
        loaded, lines = load_yaml(config_file, config_file.read_text())
        loaded = {} if loaded is None else loaded
        if not isinstance(loaded, dict):
            raise ConfigError([f"{config_file}: expected a mapping at the top level"])
        tree = loaded
    env = _env_tree(os.environ)
    try:
        return Settings.model_validate(_merge(_merge(tree, env), overrides))
    except ValidationError as exc:
        # Named by key and where it was set; never pydantic's dump of the input (secrets).
        raise explain_validation(exc, Sources(config_file, lines, env, overrides)) from None


def describe_error(exc: Exception) -> str:
    """A configuration error as one line per problem, each naming its setting, without
    pydantic's dump of the whole input tree (load_settings' ConfigError is already that)."""
    if not isinstance(exc, ValidationError):
        return str(exc)
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


# Client-side variables share the prefix but are not server settings.
_CLIENT_VARIABLES = frozenset(
    {
        "SMSGW_SERVER", "SMSGW_TOKEN", "SMSGW_VENV", "SMSGW_CA_FILE", "SMSGW_CLIENT_CERT", "SMSGW_CLIENT_KEY",
        "SMSGW_CREDENTIALS", "SMSGW_WEBHOOK_SECRET",
    }
)


def _env_tree(environ: Mapping[str, str]) -> dict[str, Any]:
    """SMSGW_BRIDGE__PING_INTERVAL=5 -> {"bridge": {"ping_interval": "5"}} (pydantic converts types)."""
    out: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith("SMSGW_") or key in _CLIENT_VARIABLES:
            continue
        *sections, leaf = key[len("SMSGW_") :].lower().split("__")
        node = out
        for part in sections:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"{key}: SMSGW_{part.upper()} is set to a value but {part!r} is a section")
        if isinstance(node.get(leaf), dict):
            raise ValueError(f"{key}: {leaf!r} is a section; set its keys as {key}__KEY")
        node[leaf] = value
    return out
