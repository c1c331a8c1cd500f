"""A stand-in for the SMSGate Android app (capcom6/android-sms-gateway v1.68.0) in private-server mode.

Written only from the wire spec (shared/smsgate-api.md §2.2, §3.10 and §4), to check a server's
compatibility the way the real app would: the mobile API under the "API URL" the user types
(`https://host:port/api/mobile/v1`), SSE wake-up (the app's SSE_ONLY channel: it registers without a
push token), state reports, settings and webhook-list sync, and the webhooks the phone itself signs
and delivers for inbound SMS.

Async (asyncio + httpx.AsyncClient). Typical use inside a sync test:

    async def main() -> None:
        async with SmsgateApp(url, private_token=token, verify=ca) as app:
            await app.register()
            app.start()                      # the SSE loop (pulls on every connect)
            ... send through the 3rd-party API ...
            await app.wait_until(lambda: app.sent_sms[mid] == 1)
    asyncio.run(main())

Where the real app would throw (a Gson/Ktor failure), a direct call raises `SmsgateCompatError`; in
the background loops the problem is recorded in `app.problems` (tests should assert it stays empty).
Every loop is bounded in count and time. Logs never carry message bodies or full phone numbers.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import contextlib
import hashlib
import hmac
import json
import logging
import re
import secrets
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx

__all__ = [
    "APP_VERSION",
    "USER_AGENT",
    "KNOWN_WEBHOOK_EVENTS",
    "Behaviour",
    "LocalMessage",
    "PullRecord",
    "SmsgateApp",
    "SmsgateCompatError",
    "SseEvent",
    "SseParser",
    "StateReport",
    "WebhookAttempt",
    "gson_time",
    "message_content",
    "nanoid",
    "parse_gson_date",
    "real_app_reconnect_delay",
    "sign_webhook",
]

log = logging.getLogger(__name__)

APP_VERSION = "1.68.0"
USER_AGENT = f"me.capcom.smsgateway/{APP_VERSION}"

# App v1.68.0 knows only these ten (spec §3.7); Gson maps any other enum string to null.
KNOWN_WEBHOOK_EVENTS = frozenset({
    "sms:received", "sms:data-received", "sms:sent", "sms:delivered", "sms:failed", "sms:cancelled",
    "system:ping", "mms:received", "mms:downloaded", "app:started",
})
KNOWN_PUSH_EVENTS = frozenset({
    "MessageEnqueued", "WebhooksUpdated", "SettingsUpdated", "MessagesExportRequested", "MessageCancelled",
})
PROCESSING_STATES = frozenset({"Pending", "Processed", "Sent", "Delivered", "Failed", "Cancelling", "Cancelled"})

_NANOID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
_MAX_PULL_ITEMS = 100  # the server returns at most 100 (spec §4.3)


class SmsgateCompatError(AssertionError):
    """The server answered something the real app would fail on."""


# ---------------------------------------------------------------------------------------------
# Pure helpers (unit-tested in tests/unit/test_smsgate_app_standin.py)


def nanoid(size: int = 21) -> str:
    return "".join(secrets.choice(_NANOID_ALPHABET) for _ in range(size))


def gson_time(when: datetime | None = None, *, offset: timedelta = timedelta(hours=7)) -> str:
    """Gson's `yyyy-MM-dd'T'HH:mm:ss.SSSXXX`: milliseconds and an offset (`Z` when it is zero)."""
    tz = timezone(offset)
    moment = (when or datetime.now(timezone.utc)).astimezone(tz)
    total = int(offset.total_seconds())
    if total == 0:
        suffix = "Z"
    else:
        sign = "+" if total > 0 else "-"
        hours, minutes = divmod(abs(total) // 60, 60)
        suffix = f"{sign}{hours:02d}:{minutes:02d}"
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}{suffix}"


_ISO = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})"
    r"(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?(Z|[+-]\d{2}(?::?\d{2})?))?$"
)


def parse_gson_date(text: str) -> datetime:
    """What Gson accepts for a `Date` field here: the app's pattern, else its lenient ISO-8601 parser,
    which needs an offset whenever there is a time (a naive time is a JsonSyntaxException). Any
    number of fractional digits; only milliseconds are kept."""
    if not isinstance(text, str):
        raise ValueError("not a string")
    m = _ISO.match(text)
    if m is None:
        raise ValueError(f"not an ISO-8601 date Gson accepts: {text!r}")
    year, month, day, hh, mm, ss, frac, tz = m.groups()
    if hh is None:
        return datetime(int(year), int(month), int(day), tzinfo=timezone.utc)
    millis = int((frac or "0")[:3].ljust(3, "0"))
    if tz == "Z":
        tzinfo = timezone.utc
    else:
        sign = -1 if tz[0] == "-" else 1
        digits = tz[1:].replace(":", "")
        minutes = int(digits[:2]) * 60 + (int(digits[2:4]) if len(digits) > 2 else 0)
        tzinfo = timezone(sign * timedelta(minutes=minutes))
    return datetime(int(year), int(month), int(day), int(hh), int(mm), int(ss or 0), millis * 1000, tzinfo=tzinfo)


def message_content(item: Mapping[str, Any]) -> tuple[str, Any] | None:
    """The app's `content = dataMessage ?: textMessage ?: message` (spec §4.3).

    Returns ("data", {"data", "port"}), ("text", text) or ("legacy", text); None when there is none."""
    data = item.get("dataMessage")
    if data is not None:
        return "data", data
    text = item.get("textMessage")
    if text is not None:
        return "text", text.get("text") if isinstance(text, Mapping) else text
    legacy = item.get("message")
    if legacy is not None:
        return "legacy", legacy
    return None


def sign_webhook(key: str, body: bytes, timestamp: str) -> str:
    """X-Signature: lowercase hex HMAC-SHA256(key as UTF-8, raw body + timestamp string) (spec §3.10)."""
    return hmac.new(key.encode("utf-8"), body + timestamp.encode("utf-8"), hashlib.sha256).hexdigest()


def real_app_reconnect_delay(attempt: int) -> float:
    """The app's SSE reconnect delay: 5 s for attempts 1–5, 30 s for 6–10, 60 s after (spec §4.5)."""
    return 5.0 if attempt <= 5 else 30.0 if attempt <= 10 else 60.0


def _mask(number: str) -> str:
    return "…" + str(number)[-4:]


def _gson_json(obj: Any) -> bytes:
    """Compact JSON like Gson's default output (nulls omitted by the callers, no spaces)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass
class SseEvent:
    name: str | None  # the `event:` field as sent (None: no name)
    data: str  # the raw data (lines joined with "\n")
    at: float = 0.0  # time.monotonic() when the chunk that completed it arrived
    id: str | None = None

    @property
    def type(self) -> str:
        """The app's reading: an event without a name is MessageEnqueued."""
        return self.name or "MessageEnqueued"


class SseParser:
    """An incremental `text/event-stream` parser, as OkHttp's reader: lines end in CR, LF or CRLF
    (split anywhere across chunks, UTF-8 too); `:` lines are comments (keepalives); a blank line
    dispatches the event only if it had a data line."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buf = ""
        self._skip_lf = False
        self._name: str | None = None
        self._data: list[str] = []
        self._id: str | None = None
        self.comments: list[str] = []
        self.comment_times: list[float] = []

    def feed(self, chunk: bytes | str, at: float | None = None) -> list[SseEvent]:
        now = time.monotonic() if at is None else at
        text = chunk if isinstance(chunk, str) else self._decoder.decode(chunk)
        out: list[SseEvent] = []
        for ch in text:
            if self._skip_lf:
                self._skip_lf = False
                if ch == "\n":
                    continue
            if ch == "\r" or ch == "\n":
                self._skip_lf = ch == "\r"
                line, self._buf = self._buf, ""
                event = self._line(line, now)
                if event is not None:
                    out.append(event)
            else:
                self._buf += ch
        return out

    def _line(self, line: str, now: float) -> SseEvent | None:
        if line == "":
            event = None
            if self._data:
                event = SseEvent(self._name, "\n".join(self._data), now, self._id)
            self._name, self._data = None, []
            return event
        if line.startswith(":"):
            self.comments.append(line[1:])
            self.comment_times.append(now)
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._name = value or None
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        return None  # retry: and unknown fields are ignored


# ---------------------------------------------------------------------------------------------
# Recorded observations


@dataclass(frozen=True)
class Behaviour:
    """How the stand-in "sends" what it pulls.

    Default: report Processed, then Sent, then Delivered (Delivered only when withDeliveryReport is
    true or absent)."""

    report: bool = True  # False: enqueue locally, report no progress and no re-sends (cancellations
    # are still reported); tests may move messages by hand with app.report_state
    first_state: str = "Processed"  # or "Pending": the server must map a reported Pending to Processed
    stop_at: str = "Delivered"  # "Processed" | "Sent" | "Delivered": the last state reported
    fail: Mapping[str, str] = field(default_factory=dict)  # number (with or without +) → error text
    fail_all: str | None = None  # every recipient fails with this error
    delay: float = 0.0  # seconds between successive reports of one message
    strip_plus: bool = False  # report numbers without the leading + (the server must add it)
    cumulative_states: bool = True  # `states` carries every state reached so far, else only the new one
    honour_ttl: bool = True  # validUntil in the past at enqueue → Failed "TTL expired"
    honour_schedule: bool = True  # wait until scheduleAt (at most max_schedule_wait) before sending
    max_schedule_wait: float = 30.0


@dataclass
class LocalMessage:
    """A message the stand-in enqueued locally."""

    id: str
    phone_numbers: list[str]
    content_kind: str  # "data" | "text" | "legacy"
    with_delivery_report: bool
    is_encrypted: bool
    sim_number: int | None
    valid_until: datetime | None
    schedule_at: datetime | None
    enqueued_at: float
    state: str = "Pending"
    recipients: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # number → (state, error)
    states: dict[str, datetime] = field(default_factory=dict)
    cancelled: bool = False
    sent: bool = False  # handed to the "radio": from then on it cannot be cancelled
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)


@dataclass(frozen=True)
class PullRecord:
    at: float
    order: str
    ids: list[str]


@dataclass(frozen=True)
class StateReport:
    """One PATCH /message, as sent (`item` is the single array element)."""

    id: str
    state: str
    item: dict[str, Any]
    at: float  # monotonic time of the successful answer
    attempts: int
    ok: bool


@dataclass(frozen=True)
class WebhookAttempt:
    delivery_id: str  # the envelope `id`: stable across retries
    webhook_id: str
    url: str
    event: str
    body: bytes
    timestamp: str
    signature: str
    key: str
    status: int | None  # None: transport error
    error: str | None
    at: float


# ---------------------------------------------------------------------------------------------


class SmsgateApp:
    """The app in private-server mode, notification channel SSE_ONLY (no push token)."""

    def __init__(
        self,
        base_url: str,
        *,
        private_token: str | None = None,
        basic: tuple[str, str] | None = None,
        code: str | None = None,
        name: str = "Google/sdk_gphone64",
        sim_cards: Sequence[Mapping[str, Any]] | None = None,
        own_number: str | None = None,
        verify: ssl.SSLContext | str | bool = True,
        webhook_verify: ssl.SSLContext | str | bool | None = None,
        behaviour: Behaviour | None = None,
        tz_offset: timedelta = timedelta(hours=7),
        timeout: float = 10.0,
        reconnect_delay: float | Callable[[int], float] = 0.1,
        sse_read_timeout: float = 3600.0,
        max_connects: int = 200,
        max_run_seconds: float = 900.0,
        report_retries: int = 10,
        report_retry_delay: float = 0.05,
        webhook_retries: int = 3,  # attempts in all, per delivery
        webhook_retry_delay: float = 0.1,
        webhook_timeout: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.private_token = private_token
        self.basic = basic
        self.code = code
        self.name = name
        self.sim_cards: list[dict[str, Any]] = [dict(s) for s in sim_cards] if sim_cards is not None else [
            {"slotIndex": 0, "simNumber": 1, "phoneNumber": "********4567", "carrierName": "T-Mobile",
             "iccid": "****************1234"},
        ]
        self.own_number = own_number
        self.behaviour = behaviour or Behaviour()
        self.tz_offset = tz_offset
        self.timeout = timeout
        self.reconnect_delay = reconnect_delay
        self.sse_read_timeout = sse_read_timeout
        self.max_connects = max_connects
        self.max_run_seconds = max_run_seconds
        self.report_retries = report_retries
        self.report_retry_delay = report_retry_delay
        self.webhook_retries = webhook_retries
        self.webhook_retry_delay = webhook_retry_delay
        self.webhook_timeout = webhook_timeout
        self._verify = _verify(verify)
        self._webhook_verify = self._verify if webhook_verify is None else _verify(webhook_verify)

        # Registration (the app's REGISTRATION_INFO)
        self.device_id: str | None = None
        self.token: str | None = None
        self.login: str | None = None
        self.password: str | None = None
        self.registrations: list[dict[str, Any]] = []  # every POST /device answer
        self.reregistered_anonymously = False  # a PATCH /device got 401 and the app registered anew
        # Sync state
        self.settings: dict[str, Any] | None = None
        self.settings_fetches = 0
        self.webhooks: list[dict[str, Any]] | None = None
        self.webhooks_fetches = 0
        self.generated_signing_key = nanoid(8)
        # Messages
        self.messages: dict[str, LocalMessage] = {}
        self.received: list[dict[str, Any]] = []  # every MobileMessage item from every pull, in order
        self.pulls: list[PullRecord] = []
        self.sent_sms: Counter[str] = Counter()  # id → times sent as an SMS (must be 1)
        self.reports: list[StateReport] = []  # every PATCH /message that succeeded
        self.failed_reports: list[StateReport] = []  # gave up after report_retries
        self.cancelled_locally: list[str] = []
        # SSE
        self.events: list[SseEvent] = []
        self.keepalives: list[float] = []
        self.connects: list[float] = []
        self.disconnects: list[tuple[float, str]] = []
        self.unknown_events: list[SseEvent] = []
        self.export_requests: list[dict[str, str]] = []
        # Webhooks sent by the phone
        self.webhook_attempts: list[WebhookAttempt] = []
        # Things the real app would have choked on (never message bodies or full numbers)
        self.problems: list[str] = []
        self.errors: list[str] = []  # transport failures in background work

        self._client: httpx.AsyncClient | None = None
        self._hook_client: httpx.AsyncClient | None = None
        self._events_task: asyncio.Task[None] | None = None
        self._conn_task: asyncio.Task[bool] | None = None
        self._next_delay: float | None = None
        self._puller: asyncio.Task[None] | None = None
        self._pull_wanted = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started_at = time.monotonic()

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> SmsgateApp:
        self._ensure_clients()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _ensure_clients(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                verify=self._verify, trust_env=False, timeout=self.timeout,
                headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            )
            self._hook_client = httpx.AsyncClient(
                verify=self._webhook_verify, trust_env=False, timeout=self.webhook_timeout,
                headers={"User-Agent": USER_AGENT},
            )
        return self._client

    async def aclose(self) -> None:
        await self.stop()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._puller is not None:
            self._puller.cancel()
            with contextlib.suppress(BaseException):
                await self._puller
        for client in (self._client, self._hook_client):
            if client is not None:
                await client.aclose()
        self._client = self._hook_client = None

    def start(self) -> asyncio.Task[None]:
        """Start the SSE loop (the app's SSEForegroundService). Needs a registered device."""
        if self.token is None:
            raise RuntimeError("register() first: the app starts SSE only after registration")
        if self._events_task is None or self._events_task.done():
            self._ensure_clients()
            self._events_task = asyncio.create_task(self._events_loop(), name="smsgate-app-sse")
        return self._events_task

    async def stop(self) -> None:
        task, self._events_task = self._events_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    def drop_stream(self, *, reconnect_after: float | None = None) -> None:
        """Cut the current SSE connection (as a network loss would); the loop reconnects after
        `reconnect_after` seconds (default: the usual delay) and pulls at once."""
        self._next_delay = reconnect_after
        if self._conn_task is not None and not self._conn_task.done():
            self._conn_task.cancel()

    @property
    def connected(self) -> bool:
        return self._conn_task is not None and not self._conn_task.done() and len(self.connects) > len(
            self.disconnects)

    async def idle(self, timeout: float = 30.0) -> None:
        """Wait until no pull and no message processing is in flight."""
        deadline = time.monotonic() + timeout
        while True:
            busy = [t for t in self._tasks if not t.done()]
            if self._puller is not None and not self._puller.done():
                busy.append(self._puller)
            if not busy:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the stand-in is still busy ({len(busy)} tasks)")
            await asyncio.wait(busy, timeout=left)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0, *, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                raise TimeoutError(f"timed out waiting for {what or predicate}; problems={self.problems}")
            await asyncio.sleep(0.01)

    # -- HTTP ----------------------------------------------------------------------------------

    def _bearer(self) -> dict[str, str]:
        if self.token is None:
            raise RuntimeError("not registered")
        return {"Authorization": f"Bearer {self.token}"}

    async def _call(self, method: str, path: str, *, headers: Mapping[str, str] | None = None,
                    body: Any = None, params: Mapping[str, str] | None = None) -> httpx.Response:
        """Ktor with expectSuccess: any non-2xx raises httpx.HTTPStatusError."""
        client = self._ensure_clients()
        hdrs = dict(headers or {})
        content = None
        if body is not None:
            content = _gson_json(body)
            hdrs["Content-Type"] = "application/json"
        resp = await client.request(method, f"{self.base_url}{path}", headers=hdrs, content=content, params=params)
        if not 200 <= resp.status_code < 300:
            log.info("smsgate-app: %s %s → %s", method, path, resp.status_code)
            resp.raise_for_status()
        return resp

    def _json(self, resp: httpx.Response, what: str) -> Any:
        """Ktor's ContentNegotiation deserialises only an application/json answer."""
        ctype = resp.headers.get("content-type", "")
        if not ctype.split(";")[0].strip().lower().endswith("json"):
            raise SmsgateCompatError(f"{what}: Content-Type {ctype!r} is not application/json")
        try:
            return json.loads(resp.content)
        except ValueError as exc:
            raise SmsgateCompatError(f"{what}: body is not JSON ({exc})") from None

    # -- registration --------------------------------------------------------------------------

    async def register(self) -> dict[str, Any]:
        """The app's registerDevice: PATCH /device when already registered (401 → register anew,
        anonymously), else POST /device with the configured credentials."""
        if self.token is not None and self.device_id is not None:
            try:
                await self._call("PATCH", "/device", headers=self._bearer(),
                                 body={"id": self.device_id, "simCards": self.sim_cards})
                return {"id": self.device_id, "token": self.token, "login": self.login}
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 401:
                    raise
            self.reregistered_anonymously = True
            return await self._register(anonymous=True)
        return await self._register(anonymous=False)

    async def _register(self, *, anonymous: bool) -> dict[str, Any]:
        headers: dict[str, str] = {}
        if not anonymous and self.code is not None:
            headers["Authorization"] = f"Code {self.code}"
        elif not anonymous and self.basic is not None:
            raw = f"{self.basic[0]}:{self.basic[1]}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        elif self.private_token is not None:
            headers["Authorization"] = f"Bearer {self.private_token}"
        # No pushToken: SSE_ONLY skips FCM registration, and Gson omits the null.
        resp = await self._call("POST", "/device", headers=headers, body={"name": self.name, "simCards": self.sim_cards})
        if resp.status_code != 201:
            self.problems.append(f"POST /device answered {resp.status_code}, the server answers 201")
        info = self._json(resp, "POST /device")
        if not isinstance(info, dict):
            raise SmsgateCompatError("POST /device: not an object")
        for key in ("id", "token", "login"):
            if not isinstance(info.get(key), str) or not info[key]:
                raise SmsgateCompatError(f"POST /device: `{key}` missing or not a string")
        if "password" in info and info["password"] is not None and not isinstance(info["password"], str):
            raise SmsgateCompatError("POST /device: `password` is not a string")
        self.registrations.append(info)
        self.device_id, self.token, self.login = info["id"], info["token"], info["login"]
        if info.get("password"):
            self.password = info["password"]
        elif anonymous or (self.code is None and self.basic is None):
            self.problems.append("POST /device created a user but returned no password")
        log.info("smsgate-app: registered device %s", self.device_id)
        return info

    async def get_device(self, *, authenticated: bool = True) -> dict[str, Any]:
        """GET /device (the app's getPublicIP): `externalIp` must be there."""
        resp = await self._call("GET", "/device", headers=self._bearer() if authenticated and self.token else None)
        body = self._json(resp, "GET /device")
        if not isinstance(body, dict) or not isinstance(body.get("externalIp"), str):
            raise SmsgateCompatError("GET /device: `externalIp` missing or not a string")
        return body

    async def update_device(self, *, push_token: str | None = None,
                            sim_cards: Sequence[Mapping[str, Any]] | None = None) -> None:
        """PATCH /device `{id, pushToken?, simCards?}` (absent fields omitted, as Gson does)."""
        body: dict[str, Any] = {"id": self.device_id}
        if push_token is not None:
            body["pushToken"] = push_token
        if sim_cards is not None:
            self.sim_cards = [dict(s) for s in sim_cards]
            body["simCards"] = self.sim_cards
        await self._call("PATCH", "/device", headers=self._bearer(), body=body)

    async def update_push_token(self, push_token: str) -> None:
        await self.update_device(push_token=push_token)

    async def change_password(self, current: str, new: str) -> None:
        await self._call("PATCH", "/user/password", headers=self._bearer(),
                         body={"currentPassword": current, "newPassword": new})
        self.password = new

    async def get_login_code(self) -> dict[str, Any]:
        """GET /user/code with Basic login:password (the "login code" button)."""
        if self.login is None or self.password is None:
            raise RuntimeError("no login/password")
        raw = base64.b64encode(f"{self.login}:{self.password}".encode()).decode()
        resp = await self._call("GET", "/user/code", headers={"Authorization": f"Basic {raw}"})
        body = self._json(resp, "GET /user/code")
        if not isinstance(body, dict) or not isinstance(body.get("code"), str):
            raise SmsgateCompatError("GET /user/code: `code` missing")
        if "validUntil" in body:
            _date(body["validUntil"], "GET /user/code validUntil")
        return body

    # -- settings and webhook list -------------------------------------------------------------

    async def get_settings(self) -> dict[str, Any]:
        resp = await self._call("GET", "/settings", headers=self._bearer())
        body = self._json(resp, "GET /settings")
        if not isinstance(body, dict):
            raise SmsgateCompatError("GET /settings: not an object")
        for section, value in body.items():
            if value is not None and not isinstance(value, dict):
                raise SmsgateCompatError(f"GET /settings: section {section!r} is not an object")
        cloud_url = (body.get("gateway") or {}).get("cloud_url")
        if cloud_url is not None and not str(cloud_url).startswith("https://"):
            self.problems.append("settings gateway.cloud_url does not start with https://")
        self.settings = body
        self.settings_fetches += 1
        return body

    @property
    def signing_key(self) -> str:
        """The webhook signing key: settings `webhooks.signing_key`, else the app's generated one."""
        key = ((self.settings or {}).get("webhooks") or {}).get("signing_key")
        return str(key) if key not in (None, "") else self.generated_signing_key

    async def get_webhooks(self) -> list[dict[str, Any]]:
        resp = await self._call("GET", "/webhooks", headers=self._bearer())
        body = self._json(resp, "GET /webhooks")
        if not isinstance(body, list):
            raise SmsgateCompatError("GET /webhooks: not an array")
        hooks: list[dict[str, Any]] = []
        for hook in body:
            if not isinstance(hook, dict) or not isinstance(hook.get("url"), str):
                raise SmsgateCompatError("GET /webhooks: an item without a string `url`")
            if not isinstance(hook.get("id"), str):
                self.problems.append("GET /webhooks: an item without a string `id`")
            if hook.get("event") not in KNOWN_WEBHOOK_EVENTS:
                # Gson turns an unknown enum string into null: the app cannot use the webhook.
                self.problems.append(f"GET /webhooks: event {hook.get('event')!r} unknown to app {APP_VERSION}")
            device = hook.get("deviceId")
            if device is not None and device != self.device_id:
                self.problems.append("GET /webhooks: a webhook of another device")
            hooks.append(hook)
        self.webhooks = hooks
        self.webhooks_fetches += 1
        return hooks

    # -- messages ------------------------------------------------------------------------------

    async def pull(self, order: str = "lifo", *, wait: bool = True) -> list[dict[str, Any]]:
        """GET /message?order=…, then handle each item as the app's processMessage does.
        `wait`: also wait (bounded) until the processing it started has reported its states."""
        resp = await self._call("GET", "/message", headers=self._bearer(), params={"order": order})
        items = self._json(resp, "GET /message")
        if not isinstance(items, list):
            raise SmsgateCompatError("GET /message: not an array")
        if len(items) > _MAX_PULL_ITEMS:
            self.problems.append(f"GET /message returned {len(items)} items (the server sends ≤100)")
        parsed = [self._check_item(item) for item in items]  # one bad item fails the whole pull (Gson)
        self.pulls.append(PullRecord(time.monotonic(), order, [str(i["id"]) for i in parsed]))
        started: list[asyncio.Task[Any]] = []
        for item in parsed:
            self.received.append(item)
            task = self._handle_item(item)
            if task is not None:
                started.append(task)
        if wait and started:
            budget = self.timeout + 4 * (self.behaviour.delay + 1) + self.behaviour.max_schedule_wait
            await asyncio.wait(started, timeout=budget)
        return parsed

    def _check_item(self, item: Any) -> dict[str, Any]:
        if not isinstance(item, dict):
            raise SmsgateCompatError("GET /message: an item is not an object")
        if not isinstance(item.get("id"), str) or not item["id"]:
            raise SmsgateCompatError("GET /message: an item without a string `id`")
        numbers = item.get("phoneNumbers")
        if not isinstance(numbers, list) or not numbers or not all(isinstance(n, str) for n in numbers):
            raise SmsgateCompatError("GET /message: `phoneNumbers` must be a non-empty array of strings")
        for key in ("createdAt", "validUntil", "scheduleAt"):
            if item.get(key) is not None:
                _date(item[key], f"GET /message `{key}`")
        if "withDeliveryReport" in item and item["withDeliveryReport"] is not None and not isinstance(
                item["withDeliveryReport"], bool):
            raise SmsgateCompatError("GET /message: `withDeliveryReport` is not a boolean")
        for key in ("simNumber", "priority", "ttl"):
            value = item.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise SmsgateCompatError(f"GET /message: `{key}` is not a number")
        state = item.get("state")
        if state is not None and state not in PROCESSING_STATES:
            self.problems.append(f"GET /message: unknown state {state!r} (Gson reads it as null: Pending)")
        data = item.get("dataMessage")
        if data is not None and (not isinstance(data, dict) or not isinstance(data.get("data"), str)
                                 or not isinstance(data.get("port"), int)):
            raise SmsgateCompatError("GET /message: `dataMessage` must be {data: string, port: int}")
        text = item.get("textMessage")
        if text is not None and (not isinstance(text, dict) or not isinstance(text.get("text"), str)):
            raise SmsgateCompatError("GET /message: `textMessage` must be {text: string}")
        return item

    def _handle_item(self, item: dict[str, Any]) -> asyncio.Task[Any] | None:
        mid = item["id"]
        state = item.get("state")
        if state not in PROCESSING_STATES:
            state = None  # absent, null or unknown → Pending
        known = self.messages.get(mid)
        if state in (None, "Pending"):
            if known is not None:
                if not self.behaviour.report:
                    return None
                return self._spawn(self._resend(known), f"resend-{mid}")
            content = message_content(item)
            if content is None:
                self.problems.append(f"message {mid}: no dataMessage, textMessage or message")
                return None
            msg = LocalMessage(
                id=mid, phone_numbers=list(item["phoneNumbers"]), content_kind=content[0],
                with_delivery_report=item.get("withDeliveryReport") is not False,
                is_encrypted=bool(item.get("isEncrypted")), sim_number=item.get("simNumber"),
                valid_until=_date(item["validUntil"], "validUntil") if item.get("validUntil") else None,
                schedule_at=_date(item["scheduleAt"], "scheduleAt") if item.get("scheduleAt") else None,
                enqueued_at=time.monotonic(),
            )
            msg.recipients = {n: ("Pending", None) for n in msg.phone_numbers}
            self.messages[mid] = msg
            log.info("smsgate-app: enqueued %s for %d recipient(s)", mid, len(msg.phone_numbers))
            if not self.behaviour.report:
                return None
            return self._spawn(self._process(msg), f"process-{mid}")
        if state == "Cancelling":
            if known is not None:
                if known.sent or known.state in ("Cancelled", "Failed"):
                    return self._spawn(self._resend(known), f"resend-{mid}")
                return self._spawn(self.cancel_local(mid), f"cancel-{mid}")
            # Unknown: report Cancelled for every recipient.
            now = datetime.now(timezone.utc)
            report = {
                "id": mid, "state": "Cancelled",
                "recipients": [{"phoneNumber": self._number(n), "state": "Cancelled"} for n in item["phoneNumbers"]],
                "states": {"Cancelled": gson_time(now, offset=self.tz_offset)},
            }
            return self._spawn(self._patch(mid, report), f"cancel-unknown-{mid}")
        return None  # other states are ignored

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(f"smsgate-app-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.errors.append(f"{task.get_name()}: {type(exc).__name__}: {exc}")

    def _number(self, number: str) -> str:
        return number.lstrip("+") if self.behaviour.strip_plus else number

    def _snapshot(self, msg: LocalMessage) -> dict[str, Any]:
        recipients = []
        for number in msg.phone_numbers:
            state, error = msg.recipients.get(number, (msg.state, None))
            entry: dict[str, Any] = {"phoneNumber": self._number(number), "state": state}
            if error is not None:
                entry["error"] = error
            recipients.append(entry)
        history = msg.states if self.behaviour.cumulative_states else {
            msg.state: msg.states.get(msg.state, datetime.now(timezone.utc))}
        if not history:
            history = {msg.state: datetime.now(timezone.utc)}
        return {
            "id": msg.id, "state": msg.state, "recipients": recipients,
            "states": {name: gson_time(when, offset=self.tz_offset) for name, when in history.items()},
        }

    def _move(self, msg: LocalMessage, state: str, recipients: Mapping[str, tuple[str, str | None]] | None = None) -> None:
        msg.state = state
        msg.states[state] = datetime.now(timezone.utc)
        if recipients is None:
            msg.recipients = {n: (state, None) for n in msg.phone_numbers}
        else:
            msg.recipients = dict(recipients)

    def _failure_for(self, number: str) -> str | None:
        if self.behaviour.fail_all is not None:
            return self.behaviour.fail_all
        bare = number.lstrip("+")
        for key, error in self.behaviour.fail.items():
            if key.lstrip("+") == bare:
                return error
        return None

    async def _process(self, msg: LocalMessage) -> None:
        b = self.behaviour
        order = ["Processed", "Sent", "Delivered"]
        last = b.stop_at if b.stop_at in order else "Delivered"
        if last == "Delivered" and not msg.with_delivery_report:
            last = "Sent"
        # 1. taken by the phone
        async with msg.lock:
            if msg.cancelled:
                return
            if b.honour_ttl and msg.valid_until is not None and msg.valid_until <= datetime.now(timezone.utc):
                self._move(msg, "Failed", {n: ("Failed", "TTL expired") for n in msg.phone_numbers})
                await self._patch(msg.id, self._snapshot(msg))
                return
            self._move(msg, b.first_state if b.first_state in ("Pending", "Processed") else "Processed")
            await self._patch(msg.id, self._snapshot(msg))
        if last == "Processed":
            return
        if b.honour_schedule and msg.schedule_at is not None:
            wait = (msg.schedule_at - datetime.now(timezone.utc)).total_seconds()
            await asyncio.sleep(min(max(wait, 0.0), b.max_schedule_wait))
        await asyncio.sleep(b.delay)
        # 2. sent (or failed) per recipient
        async with msg.lock:
            if msg.cancelled:
                return
            if b.honour_ttl and msg.valid_until is not None and msg.valid_until <= datetime.now(timezone.utc):
                self._move(msg, "Failed", {n: ("Failed", "TTL expired") for n in msg.phone_numbers})
                await self._patch(msg.id, self._snapshot(msg))
                return
            msg.sent = True
            self.sent_sms[msg.id] += 1
            log.info("smsgate-app: sent %s to %s", msg.id, ", ".join(_mask(n) for n in msg.phone_numbers))
            outcome = {}
            for number in msg.phone_numbers:
                error = self._failure_for(number)
                outcome[number] = ("Failed", error) if error is not None else ("Sent", None)
            any_ok = any(s == "Sent" for s, _ in outcome.values())
            self._move(msg, "Sent" if any_ok else "Failed", outcome)
            await self._patch(msg.id, self._snapshot(msg))
            if not any_ok or last == "Sent":
                return
        await asyncio.sleep(b.delay)
        # 3. delivered
        async with msg.lock:
            delivered = {n: (("Delivered", None) if s == "Sent" else (s, e)) for n, (s, e) in msg.recipients.items()}
            self._move(msg, "Delivered", delivered)
            await self._patch(msg.id, self._snapshot(msg))

    async def _resend(self, msg: LocalMessage) -> None:
        """A known id pulled again: re-send its last state."""
        async with msg.lock:
            if not msg.states:
                msg.states["Pending"] = datetime.now(timezone.utc)
            await self._patch(msg.id, self._snapshot(msg))

    async def cancel_local(self, message_id: str) -> bool:
        """Cancel a locally enqueued message that was not sent yet, and report Cancelled."""
        msg = self.messages.get(message_id)
        if msg is None or msg.sent or msg.cancelled or msg.state in ("Failed", "Cancelled"):
            return False
        msg.cancelled = True
        async with msg.lock:
            self._move(msg, "Cancelled")
            self.cancelled_locally.append(message_id)
            await self._patch(msg.id, self._snapshot(msg))
        return True

    async def report_state(self, message_id: str, state: str, *,
                           recipients: Mapping[str, tuple[str, str | None]] | None = None) -> StateReport:
        """Move a local message to `state` by hand and report it (for Behaviour(report=False))."""
        msg = self.messages[message_id]
        async with msg.lock:
            if state in ("Sent", "Delivered") and not msg.sent:
                msg.sent = True
                self.sent_sms[msg.id] += 1
            self._move(msg, state, recipients)
            return await self._patch(msg.id, self._snapshot(msg))

    async def _patch(self, message_id: str, item: dict[str, Any]) -> StateReport:
        """PATCH /message with a one-element array, retried with backoff (SendStateWorker)."""
        attempts = 0
        delay = self.report_retry_delay
        last_error = ""
        while attempts < self.report_retries:
            attempts += 1
            try:
                await self._call("PATCH", "/message", headers=self._bearer(), body=[item])
                report = StateReport(message_id, item["state"], item, time.monotonic(), attempts, True)
                self.reports.append(report)
                return report
            except (httpx.HTTPError, OSError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        report = StateReport(message_id, item["state"], item, time.monotonic(), attempts, False)
        self.failed_reports.append(report)
        self.errors.append(f"PATCH /message {message_id} {item['state']} gave up after {attempts}: {last_error}")
        return report

    def reports_for(self, message_id: str) -> list[StateReport]:
        return [r for r in self.reports if r.id == message_id]

    # -- SSE -----------------------------------------------------------------------------------

    def request_pull(self) -> None:
        """The app's PullMessagesWorker: coalesced, one GET at a time, never blocks the stream."""
        self._pull_wanted = True
        if self._puller is None or self._puller.done():
            self._puller = asyncio.create_task(self._pull_loop(), name="smsgate-app-puller")

    async def _pull_loop(self) -> None:
        for _ in range(1000):
            if not self._pull_wanted:
                return
            self._pull_wanted = False
            try:
                await self.pull(wait=False)
            except SmsgateCompatError as exc:
                self.problems.append(str(exc))
            except (httpx.HTTPError, OSError) as exc:
                self.errors.append(f"pull: {type(exc).__name__}: {exc}")

    def _delay(self, attempt: int) -> float:
        if self._next_delay is not None:
            delay, self._next_delay = self._next_delay, None
            return delay
        if callable(self.reconnect_delay):
            return float(self.reconnect_delay(attempt))
        return float(self.reconnect_delay)

    async def _events_loop(self) -> None:
        deadline = time.monotonic() + self.max_run_seconds
        attempt = 0
        for _ in range(self.max_connects * 10):  # bounded: failed attempts count too
            if len(self.connects) >= self.max_connects or time.monotonic() >= deadline:
                break
            self._conn_task = asyncio.create_task(self._one_connection(), name="smsgate-app-sse-conn")
            reason = "closed by the server"
            try:
                await self._conn_task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
                reason = "dropped"
            except Exception as exc:  # noqa: BLE001 - any failure: the app logs it and reconnects
                if isinstance(exc, SmsgateCompatError):
                    self.problems.append(str(exc))
                self.errors.append(f"events: {type(exc).__name__}: {exc}")
                reason = type(exc).__name__
            opened = len(self.disconnects) < len(self.connects)
            if opened:
                self.disconnects.append((time.monotonic(), reason))
            attempt = 1 if opened else attempt + 1
            await asyncio.sleep(self._delay(attempt))

    async def _one_connection(self) -> bool:
        client = self._ensure_clients()
        timeout = httpx.Timeout(self.timeout, read=self.sse_read_timeout)
        headers = {**self._bearer(), "Accept": "text/event-stream"}
        async with client.stream("GET", f"{self.base_url}/events", headers=headers, timeout=timeout) as resp:
            if not 200 <= resp.status_code < 300:
                raise httpx.HTTPStatusError(f"GET /events answered {resp.status_code}", request=resp.request,
                                            response=resp)
            ctype = resp.headers.get("content-type", "")
            if ctype.split(";")[0].strip().lower() != "text/event-stream":
                raise SmsgateCompatError(f"GET /events: Content-Type {ctype!r} is not text/event-stream")
            self.connects.append(time.monotonic())
            log.info("smsgate-app: SSE connected (%d)", len(self.connects))
            self.request_pull()  # on every (re)connect the app pulls at once
            parser = SseParser()
            async for chunk in resp.aiter_bytes():
                at = time.monotonic()
                seen = len(parser.comments)
                events = parser.feed(chunk, at)
                self.keepalives.extend([at] * (len(parser.comments) - seen))
                for event in events:
                    self._dispatch(event)
        return True

    def _dispatch(self, event: SseEvent) -> None:
        self.events.append(event)
        kind = event.type
        if kind not in KNOWN_PUSH_EVENTS:
            self.unknown_events.append(event)
            self.problems.append(f"SSE: unknown event {event.name!r}")
            return
        try:
            data = json.loads(event.data) if event.data.strip() else None
        except ValueError:
            self.problems.append(f"SSE {kind}: data is not JSON")
            data = None
        log.info("smsgate-app: SSE %s", kind)
        if kind == "MessageEnqueued":
            self.request_pull()
        elif kind == "SettingsUpdated":
            self._spawn(self._background(self.get_settings(), "settings"), "settings")
        elif kind == "WebhooksUpdated":
            self._spawn(self._background(self.get_webhooks(), "webhooks"), "webhooks")
        elif kind == "MessagesExportRequested":
            if not isinstance(data, dict):
                self.problems.append("SSE MessagesExportRequested: data is not an object")
                return
            bad = [k for k, v in data.items() if not isinstance(v, str)]
            if bad:
                self.problems.append(f"SSE MessagesExportRequested: values of {bad} are not strings")
            for key in ("since", "until"):
                if isinstance(data.get(key), str):
                    try:
                        parse_gson_date(data[key])
                    except ValueError:
                        self.problems.append(f"SSE MessagesExportRequested: `{key}` is not a Gson date")
            self.export_requests.append({k: str(v) for k, v in data.items()})
        elif kind == "MessageCancelled":
            mid = data.get("messageId") if isinstance(data, dict) else None
            if not isinstance(mid, str):
                self.problems.append("SSE MessageCancelled: no string `messageId`")
                return
            self._spawn(self.cancel_local(mid), f"cancel-{mid}")

    async def _background(self, coro: Awaitable[Any], what: str) -> None:
        try:
            await coro
        except SmsgateCompatError as exc:
            self.problems.append(str(exc))
        except (httpx.HTTPError, OSError) as exc:
            self.errors.append(f"{what}: {type(exc).__name__}: {exc}")

    def events_of(self, kind: str) -> list[SseEvent]:
        return [e for e in self.events if e.type == kind]

    # -- inbound SMS → webhooks ----------------------------------------------------------------

    async def receive_sms(self, sender: str, text: str, *, received_at: datetime | None = None,
                          sim_number: int | None = 1) -> list[WebhookAttempt]:
        payload: dict[str, Any] = {"message": text}
        return await self._inbound("sms:received", sender, payload, received_at, sim_number)

    async def receive_data_sms(self, sender: str, data_b64: str, port: int, *, received_at: datetime | None = None,
                               sim_number: int | None = 1) -> list[WebhookAttempt]:
        # The spec's sms:data-received payload has `data` and `receivedAt` only: `port` is not sent.
        del port
        return await self._inbound("sms:data-received", sender, {"data": data_b64}, received_at, sim_number)

    async def _inbound(self, event: str, sender: str, extra: dict[str, Any], received_at: datetime | None,
                       sim_number: int | None) -> list[WebhookAttempt]:
        hooks = self.webhooks if self.webhooks is not None else await self.get_webhooks()
        payload: dict[str, Any] = {"messageId": nanoid(), **extra, "sender": sender}
        if self.own_number is not None:
            payload["recipient"] = self.own_number  # Gson omits nulls
        payload["phoneNumber"] = sender
        if sim_number is not None:
            payload["simNumber"] = sim_number
        payload["receivedAt"] = gson_time(received_at, offset=self.tz_offset)
        results: list[WebhookAttempt] = []
        for hook in hooks:
            if hook.get("event") != event:
                continue
            if hook.get("deviceId") not in (None, self.device_id):
                continue
            url = str(hook.get("url", ""))
            if not _app_accepts_url(url):
                self.problems.append(f"webhook {hook.get('id')}: URL scheme the app refuses")
                continue
            envelope = {"id": nanoid(), "webhookId": hook.get("id"), "event": event,
                        "deviceId": self.device_id, "payload": payload}
            results.append(await self._deliver(url, envelope))
        return results

    async def _deliver(self, url: str, envelope: dict[str, Any]) -> WebhookAttempt:
        assert self._hook_client is not None
        body = _gson_json(envelope)
        delay = self.webhook_retry_delay
        attempt: WebhookAttempt | None = None
        for n in range(max(1, self.webhook_retries)):
            timestamp = str(int(time.time()))
            key = self.signing_key
            signature = sign_webhook(key, body, timestamp)
            status: int | None = None
            error: str | None = None
            try:
                resp = await self._hook_client.post(url, content=body, headers={
                    "Content-Type": "application/json", "X-Timestamp": timestamp, "X-Signature": signature})
                status = resp.status_code
            except (httpx.HTTPError, OSError) as exc:
                error = type(exc).__name__
            attempt = WebhookAttempt(envelope["id"], str(envelope["webhookId"]), url, envelope["event"], body,
                                     timestamp, signature, key, status, error, time.monotonic())
            self.webhook_attempts.append(attempt)
            if status is not None and 200 <= status < 300:
                return attempt
            if n + 1 < self.webhook_retries:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        assert attempt is not None
        return attempt


def _app_accepts_url(url: str) -> bool:
    """The app delivers to https:// URLs, and to plain http only on 127.0.0.1."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        return False
    return parsed.scheme == "https" or (parsed.scheme == "http" and parsed.host == "127.0.0.1")


def _verify(verify: ssl.SSLContext | str | bool) -> ssl.SSLContext | bool:
    """httpx 0.28 deprecates a CA path for `verify`: make the context here."""
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return verify


def _date(value: Any, what: str) -> datetime:
    try:
        return parse_gson_date(value)
    except ValueError as exc:
        raise SmsgateCompatError(f"{what}: {exc}") from None
