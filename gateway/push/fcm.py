"""The FCM HTTP v1 sender: one high-priority data message that wakes a phone whose WebSocket
session dropped (issue 17).

The message carries nothing private, only `{"type": "wake", "nonce": <random>}`: Google learns
that some phone of this project was woken, never a message, number or id. The phone wakes,
reconnects its session and takes its work from there.

Access tokens come from the service account's OAuth 2.0 JWT-bearer grant (RFC 7523) at the key
file's `token_uri`, through google-auth. The token is cached while google-auth calls it `valid`
(until 3 min 45 s before expiry) and refreshed once more when FCM answers 401 (revoked early).

How FCM's answers are read (https://firebase.google.com/docs/cloud-messaging/manage-tokens and
the v1 `ErrorCode` reference): 2xx sent; 429 and 5xx, transport errors and a failing token
endpoint retried with capped exponential backoff honouring Retry-After; UNREGISTERED,
SENDER_ID_MISMATCH and an INVALID_ARGUMENT about `message.token` mean the token is dead (stop
pushing to it); any other 4xx is final.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from google.auth import exceptions as auth_exceptions
from google.auth import transport
from google.oauth2 import service_account

from gateway.webhooks.schedule import parse_retry_after

__all__ = ["FCM_SCOPE", "FcmConfigError", "PushOutcome", "WakeResult", "FcmSender", "load_service_account"]

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
USER_AGENT = "smsgw-push/1"

log = logging.getLogger(__name__)

_REQUIRED_FIELDS = ("client_email", "private_key", "token_uri", "project_id")
_MAX_KEY_FILE = 1 << 20  # a real key file is ~2.3 KB
_MAX_DETAIL = 200
_CODE = re.compile(r"[A-Z][A-Z_]{0,39}")  # only enum-like words from FCM's answer reach a log line
_FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"


class FcmConfigError(ValueError):
    """The service-account key file is unusable: one line naming the file and the problem,
    never any of the key's material."""


class PushOutcome(StrEnum):
    SENT = "sent"
    INVALID_TOKEN = "invalid_token"  # UNREGISTERED, SENDER_ID_MISMATCH, INVALID_ARGUMENT on message.token: stop pushing to it
    FAILED = "failed"  # gave up after retries (429/5xx/transport/token endpoint), or a final 4xx not about the token
    UNAUTHORIZED = "unauthorized"  # 401 again right after a fresh access token: credentials revoked or wrong project


@dataclass(frozen=True)
class WakeResult:
    outcome: PushOutcome
    detail: str = ""  # short reason for logs and metrics; never a push token or access token
    attempts: int = 1


def load_service_account(path: Path) -> dict[str, Any]:
    """Read and check a service-account key file, so a bad one fails at startup, not at the
    first wake-up hours later.

    Raises:
        FcmConfigError: missing or unreadable file, not JSON, not a service account, a
            missing field, or a private key that does not parse.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FcmConfigError(f"{path}: no such file (the FCM service-account key)") from None
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise FcmConfigError(f"{path}: cannot read the FCM service-account key ({reason})") from None
    if len(raw) > _MAX_KEY_FILE:
        raise FcmConfigError(f"{path}: too large for a service-account key ({len(raw)} bytes)")
    try:
        info = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise FcmConfigError(f"{path}: not a service-account key (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        # Only the position: the decoder's message is safe, but the document may be a bare key.
        raise FcmConfigError(f"{path}: not JSON (line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(info, dict):
        raise FcmConfigError(f"{path}: not a service-account key (a JSON object is expected)")
    if info.get("type") != "service_account":
        raise FcmConfigError(f'{path}: not a service-account key ("type" must be "service_account")')
    missing = [name for name in _REQUIRED_FIELDS if not isinstance(info.get(name), str) or not info[name].strip()]
    if missing:
        raise FcmConfigError(f"{path}: service-account key lacks {', '.join(missing)}")
    token_uri = urlsplit(info["token_uri"])
    if token_uri.scheme not in ("https", "http") or not token_uri.hostname:
        raise FcmConfigError(f"{path}: token_uri is not an http(s) URL")
    if token_uri.scheme == "http" and token_uri.hostname not in ("127.0.0.1", "::1", "localhost"):
        # The signed grant would travel in clear: plain http only to a stand-in on this machine.
        raise FcmConfigError(f"{path}: token_uri must be https (plain http only on loopback)")
    try:
        key = load_pem_private_key(info["private_key"].encode("utf-8"), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm, UnicodeEncodeError):
        # cryptography's message says nothing of the key, but drop it anyway: only our words.
        raise FcmConfigError(f"{path}: private_key is not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise FcmConfigError(f"{path}: private_key is not an RSA key (service accounts sign with RS256)")
    return info


class FcmSender:
    """Sends wake-ups for one Firebase project. Use one per process; call `aclose()` at the end.

    Args:
        credentials_file: the service-account key JSON (read and checked at once).
        base_url: FCM's origin; tests and the simulator point it at `gateway.push.standin`.
        ttl_seconds: how long FCM keeps an undelivered wake-up (`android.ttl`).
        timeout: seconds for one HTTP request to FCM or the token endpoint.
        max_attempts: attempts per wake-up for retryable failures. The one retry after a 401
            (with a fresh access token) comes on top, so a revoked token is always noticed.
        max_backoff: ceiling of any wait between attempts, Retry-After included.
        sleep: the wait between attempts (tests pass a recorder).

    Raises:
        FcmConfigError: the key file is unusable.
    """

    def __init__(
        self,
        credentials_file: Path,
        *,
        base_url: str = "https://fcm.googleapis.com",
        ttl_seconds: int = 60,
        timeout: float = 10.0,
        max_attempts: int = 4,
        max_backoff: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if max_attempts < 1 or ttl_seconds < 0 or timeout <= 0 or max_backoff < 0:
            raise ValueError("FcmSender: max_attempts >= 1, ttl_seconds >= 0, timeout > 0 and max_backoff >= 0 are required")
        if urlsplit(base_url).scheme not in ("https", "http") or not urlsplit(base_url).hostname:
            raise ValueError(f"FcmSender: base_url must be an http(s) URL, not {base_url!r}")
        info = load_service_account(credentials_file)
        self.project_id: str = info["project_id"]
        self.ttl_seconds = ttl_seconds
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.max_backoff = max_backoff
        self._sleep = sleep
        try:
            # google-auth puts Google's own endpoint in the assertion's `aud`; the grant must
            # name the endpoint it is sent to (RFC 7523 3), which is the same URL for a real
            # key and the stand-in's for a test key.
            self._credentials = service_account.Credentials.from_service_account_info(
                info, scopes=[FCM_SCOPE], additional_claims={"aud": info["token_uri"]}
            )
        except (ValueError, auth_exceptions.GoogleAuthError) as exc:
            raise FcmConfigError(f"{credentials_file}: google-auth refused the key ({exc.__class__.__name__})") from None
        self._url = f"{base_url.rstrip('/')}/v1/projects/{quote(self.project_id, safe='')}/messages:send"
        options: dict[str, Any] = {
            "timeout": httpx.Timeout(timeout), "trust_env": False, "follow_redirects": False, "headers": {"user-agent": USER_AGENT}
        }
        self._token_http = httpx.Client(**options)
        self._auth_request = _HttpxRequest(self._token_http)
        self._client = httpx.AsyncClient(**options)
        # One refresh at a time: a burst of wake-ups after a restart makes one grant, not fifty.
        self._refresh_lock = asyncio.Lock()
        self._closed = False

    async def wake(self, push_token: str, collapse_key: str) -> WakeResult:
        """Send one wake-up to `push_token`. Never raises for anything FCM, the token endpoint
        or the network does: the outcome says what happened and whether to keep the token.

        Args:
            push_token: the phone's FCM registration token.
            collapse_key: FCM keeps only the newest undelivered wake-up per key (use one per phone).
        """
        if self._closed:
            raise RuntimeError("FcmSender is closed")
        if not collapse_key:
            raise ValueError("collapse_key must not be empty")
        if not push_token:
            return self._finish(WakeResult(PushOutcome.INVALID_TOKEN, "empty token", 0))
        # The same nonce on every attempt: a phone woken twice by retries can tell.
        body = json.dumps(self._message(push_token, collapse_key), separators=(",", ":")).encode()
        failures: list[str] = []
        limit = self.max_attempts
        refused: str | None = None  # an access token FCM answered 401 to: refresh past it
        attempt = 0
        while attempt < limit:
            attempt += 1
            retry_after: float | None = None
            try:
                token = await self._access_token(refused)
            except auth_exceptions.GoogleAuthError as exc:  # RefreshError, TransportError
                failures.append(f"token endpoint: {_auth_reason(exc)}")
            else:
                try:
                    async with asyncio.timeout(self.timeout):
                        response = await self._client.post(
                            self._url,
                            content=body,
                            headers={"authorization": f"Bearer {token}", "content-type": "application/json; charset=UTF-8"},
                        )
                except (TimeoutError, httpx.TimeoutException):
                    failures.append(f"timed out after {self.timeout:g} s")
                except httpx.HTTPError as exc:
                    failures.append(_transport_reason(exc))
                else:
                    status = response.status_code
                    if 200 <= status < 300:
                        return self._finish(WakeResult(PushOutcome.SENT, "", attempt))
                    if status == 401:
                        if refused is not None:
                            return self._finish(WakeResult(PushOutcome.UNAUTHORIZED, "HTTP 401 after a token refresh", attempt))
                        refused = token
                        limit += 1  # the retry with a fresh token is not a backoff attempt
                        continue
                    if status == 429 or status >= 500:
                        failures.append(f"HTTP {status}")
                        retry_after = parse_retry_after(response.headers.get("retry-after"), datetime.now(UTC))
                    else:
                        outcome, detail = _classify(status, _error_of(response))
                        return self._finish(WakeResult(outcome, detail, attempt))
            if attempt >= limit:
                break
            await self._sleep(self._backoff(len(failures), retry_after))
        return self._finish(WakeResult(PushOutcome.FAILED, _summarise(failures), attempt))

    async def aclose(self) -> None:
        """Close the HTTP clients. Idempotent; waits for a refresh in progress."""
        if self._closed:
            return
        self._closed = True
        await self._client.aclose()
        async with self._refresh_lock:
            self._token_http.close()

    def _message(self, push_token: str, collapse_key: str) -> dict[str, Any]:
        return {
            "message": {
                "token": push_token,
                "data": {"type": "wake", "nonce": secrets.token_urlsafe(16)},
                "android": {"priority": "high", "ttl": f"{self.ttl_seconds}s", "collapse_key": collapse_key},
            }
        }

    async def _access_token(self, refused: str | None) -> str:
        """The cached access token, refreshed when google-auth no longer calls it valid or it
        is the one FCM just refused (unless another wake-up has refreshed it meanwhile)."""
        async with self._refresh_lock:
            credentials = self._credentials
            if not credentials.valid or credentials.token == refused:
                # google-auth's refresh blocks (and retries a 5xx grant itself, sleeping): a thread.
                await asyncio.to_thread(credentials.refresh, self._auth_request)
            token = credentials.token
            if not isinstance(token, str) or not token:
                raise auth_exceptions.RefreshError("no access token in the answer")
            return token

    def _backoff(self, failures: int, retry_after: float | None) -> float:
        """1 s, 2 s, 4 s ... plus up to 25 % jitter; never sooner than Retry-After; capped."""
        delay = 2.0 ** min(failures - 1, 30) * random.uniform(1.0, 1.25)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self.max_backoff)

    def _finish(self, result: WakeResult) -> WakeResult:
        if result.outcome in (PushOutcome.FAILED, PushOutcome.UNAUTHORIZED):
            log.warning(
                "FCM wake-up %s after %d attempt(s) (project %s): %s",
                result.outcome, result.attempts, self.project_id, result.detail,
            )
        elif result.outcome is PushOutcome.INVALID_TOKEN:
            log.info("FCM refused a push token: %s", result.detail)
        return result


class _HttpxResponse(transport.Response):
    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return dict(self._response.headers)

    @property
    def data(self) -> bytes:
        return self._response.content


class _HttpxRequest(transport.Request):
    """google-auth's transport over a sync httpx.Client (`requests` is not a dependency).
    Called from a worker thread during a refresh."""

    def __init__(self, client: httpx.Client) -> None:
        self._client = client

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> transport.Response:
        try:
            response = self._client.request(
                method, url, content=body, headers=headers, timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise auth_exceptions.TransportError(_transport_reason(exc)) from exc
        return _HttpxResponse(response)


def _error_of(response: httpx.Response) -> dict[str, Any]:
    """FCM's `{"error": {...}}` object, or {} for any other body."""
    try:
        doc = response.json()
    except ValueError:
        return {}
    error = doc.get("error") if isinstance(doc, dict) else None
    return error if isinstance(error, dict) else {}


def _details(error: Mapping[str, Any], type_url: str) -> list[dict[str, Any]]:
    details = error.get("details")
    if not isinstance(details, list):
        return []
    return [d for d in details if isinstance(d, dict) and d.get("@type") == type_url]


def _code(value: Any) -> str:
    return value if isinstance(value, str) and _CODE.fullmatch(value) else ""


def _names_token(error: Mapping[str, Any]) -> bool:
    """Whether an INVALID_ARGUMENT is about the registration token, not our message."""
    for detail in _details(error, _BAD_REQUEST_TYPE):
        violations = detail.get("fieldViolations")
        if isinstance(violations, list) and any(isinstance(v, dict) and v.get("field") == "message.token" for v in violations):
            return True
    message = error.get("message")
    return isinstance(message, str) and "registration token" in message.lower()


def _classify(status: int, error: Mapping[str, Any]) -> tuple[PushOutcome, str]:
    """A final (non-retryable) answer other than 401."""
    fcm_code = next((_code(d.get("errorCode")) for d in _details(error, _FCM_ERROR_TYPE) if _code(d.get("errorCode"))), "")
    status_code = _code(error.get("status"))
    if fcm_code in ("UNREGISTERED", "SENDER_ID_MISMATCH"):
        return PushOutcome.INVALID_TOKEN, fcm_code
    if status == 400 and "INVALID_ARGUMENT" in (fcm_code, status_code) and _names_token(error):
        return PushOutcome.INVALID_TOKEN, "INVALID_ARGUMENT message.token"
    label = fcm_code or status_code
    return PushOutcome.FAILED, f"HTTP {status} {label}" if label else f"HTTP {status}"


def _transport_reason(exc: Exception) -> str:
    text = str(exc) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}"[:_MAX_DETAIL]


def _auth_reason(exc: Exception) -> str:
    """google-auth's first argument ("invalid_grant: Invalid JWT Signature."); its second is
    the whole answer, which we do not echo."""
    first = exc.args[0] if exc.args else exc.__class__.__name__
    return str(first)[:120]


def _summarise(failures: list[str]) -> str:
    """'HTTP 503 x4', or 'HTTP 503 x2; HTTP 429 x1' in order of first appearance."""
    counts: dict[str, int] = {}
    for reason in failures:
        counts[reason] = counts.get(reason, 0) + 1
    return "; ".join(f"{reason} x{n}" for reason, n in counts.items())[:_MAX_DETAIL]
