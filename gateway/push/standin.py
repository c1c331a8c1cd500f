"""A local stand-in for Google's OAuth 2.0 token endpoint and FCM HTTP v1, on loopback, for
the tests, `smsgw simulate` and the bench (issue 17).

It checks what the real services check and what matters to us: the service account's signed
JWT-bearer grant (RS256 with the account's key; `iss`, `aud`, `scope`, a lifetime of at most an
hour) and a live bearer access token on every send. Stricter than FCM, it accepts only the
exact wake-up shape (`data` is `{"type": "wake", "nonce": ...}`, high priority, a TTL and a
collapse key, no notification), so a test proves that nothing private leaves the gateway.
Errors are answered in FCM v1's JSON error format (`code`, `message`, `status`, `details` with
the FcmError `errorCode`), so the sender's classification runs for real; `script()` makes the
next sends fail in chosen ways.

Loopback forwarding, for the simulator's dozing phones: a push token of the form
`loopback:<port>:<phone>` (`<phone>`: letters, digits, `_.-`) makes the stand-in, once it has
accepted the send, POST the message's data (`{"type": "wake", "nonce": ...}`, JSON) to
`http://127.0.0.1:<port>/wake/<phone>`, from a background thread with a short timeout,
ignoring any error. The simulator listens on such a port for all its dozing phones, each
reporting such a token in its Hello. Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.private_files import write_private_file

__all__ = ["PushReceived", "FcmStandIn", "Answer", "JWT_BEARER"]

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
_FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
_SEND_PATH = re.compile(r"/v1/projects/(?P<project>[^/]+)/messages:send")
_LOOPBACK_TOKEN = re.compile(r"loopback:(?P<port>[0-9]{1,5}):(?P<phone>[A-Za-z0-9_.-]{1,200})")
_TTL = re.compile(r"[0-9]+s")
_MAX_BODY = 64 * 1024
_FORWARD_TIMEOUT = 2.0
_CLOSE_WAIT = 3.0  # close() waits at most this long for forwards still in flight

# A scripted answer: a status, (status, Retry-After), or one of the named answers below.
Answer = int | tuple[int, str] | str
_NAMED = frozenset({"unregistered", "invalid_token", "sender_id_mismatch", "expire_token"})
# Plain statuses answered as FCM does: (google.rpc status, FcmError errorCode or "").
_STATUS_OF = {
    400: ("INVALID_ARGUMENT", "INVALID_ARGUMENT"),
    401: ("UNAUTHENTICATED", ""),
    403: ("PERMISSION_DENIED", ""),
    404: ("NOT_FOUND", ""),
    429: ("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"),
    500: ("INTERNAL", "INTERNAL"),
    503: ("UNAVAILABLE", "UNAVAILABLE"),
}

log = logging.getLogger(__name__)


@dataclass
class PushReceived:
    token: str
    message: dict[str, Any]  # the "message" object as sent
    at: float  # time.monotonic()


@dataclass(frozen=True)
class _Reply:
    status: int
    doc: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()


class FcmStandIn:
    """The token endpoint and FCM v1 for one fake project, on a loopback port of its own.

    The port is bound at construction (so `base_url` and the service account are known at
    once); `start()` serves it and `close()` releases it. Use it as a context manager.
    Set `token_ttl` well above google-auth's refresh margin (225 s), or the sender refreshes
    before every send.
    """

    def __init__(
        self, *, project_id: str = "smsgw-standin", host: str = "127.0.0.1", port: int = 0, token_ttl: int = 3600
    ) -> None:
        self.project_id = project_id
        self.token_ttl = token_ttl
        self.client_email = f"smsgw-push@{project_id}.iam.gserviceaccount.com"
        self.received: list[PushReceived] = []
        self.token_requests = 0  # successful grants
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._private_key_id = secrets.token_hex(20)
        self._client_id = str(100000000000000000000 + secrets.randbelow(10**20))
        self._lock = threading.Lock()
        self._tokens: dict[str, float] = {}  # access token -> monotonic expiry
        self._script: deque[Answer] = deque()
        self._hooks: list[tuple[str, Callable[[str, dict[str, Any]], None]]] = []
        self._forwards: list[threading.Thread] = []
        self._connections: set[socket.socket] = set()
        self._server = _Server((host, port), _handler_for(self))
        self._thread: threading.Thread | None = None
        self._closed = False
        bound_port = self._server.server_address[1]
        self.base_url = f"http://{host}:{bound_port}"
        self.token_uri = f"{self.base_url}/token"

    def __enter__(self) -> FcmStandIn:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> None:
        """Serve in a daemon thread. Idempotent."""
        if self._closed:
            raise RuntimeError("FcmStandIn is closed")
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fcm-standin", daemon=True
            )
            self._thread.start()

    def close(self) -> None:
        """Stop serving, drop kept-alive connections, wait (bounded) for forwards. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=_CLOSE_WAIT)
        with self._lock:
            connections = list(self._connections)
            forwards = list(self._forwards)
        for conn in connections:  # wakes the handler threads blocked on a keep-alive read
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        deadline = time.monotonic() + _CLOSE_WAIT
        for thread in forwards:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def service_account(self) -> dict[str, Any]:
        """A service-account key JSON for this project, as the Firebase console downloads it."""
        pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode("ascii")
        return {
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": self._private_key_id,
            "private_key": pem,
            "client_email": self.client_email,
            "client_id": self._client_id,
            "token_uri": self.token_uri,
        }

    def write_service_account(self, path: Path) -> Path:
        """Write `service_account()` to `path`, owner-only (0600)."""
        write_private_file(path, json.dumps(self.service_account(), indent=2) + "\n")
        return path

    def script(self, *answers: Answer) -> None:
        """Set how the next well-formed, authorised sends are answered, in order; later sends
        are accepted. An answer is a status (a 2xx accepts), (status, Retry-After), or:
        "unregistered" (404 UNREGISTERED), "invalid_token" (400 INVALID_ARGUMENT on
        message.token), "sender_id_mismatch" (403 SENDER_ID_MISMATCH), "expire_token"
        (invalidate every access token issued so far, then 401 as FCM answers an expired one)."""
        for answer in answers:
            if isinstance(answer, str) and answer not in _NAMED:
                raise ValueError(f"unknown scripted answer {answer!r}; expected one of {sorted(_NAMED)}")
        with self._lock:
            self._script.extend(answers)

    def forward_to(self, token_prefix: str, deliver: Callable[[str, dict[str, Any]], None]) -> None:
        """Call `deliver(token, data)` for each accepted send whose token starts with
        `token_prefix` (in-process simulated phones). It runs on a stand-in thread after the
        answer is written: keep it quick and thread-safe."""
        with self._lock:
            self._hooks.append((token_prefix, deliver))

    # Called on handler threads.

    def _track(self, conn: socket.socket, alive: bool) -> None:
        with self._lock:
            if alive:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _grant(self, body: bytes) -> _Reply:
        """POST /token: the JWT-bearer grant (RFC 7523 2.1), checked as Google checks it."""
        form = parse_qs(body.decode("utf-8", "replace"))
        if form.get("grant_type", [""])[0] != JWT_BEARER:
            return _Reply(400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type."})
        assertion = form.get("assertion", [""])[0]
        try:
            header = jwt.get_unverified_header(assertion)
            if header.get("kid", self._private_key_id) != self._private_key_id:
                raise jwt.InvalidSignatureError("unknown kid")
            claims = jwt.decode(
                assertion,
                self._key.public_key(),
                algorithms=["RS256"],
                audience=self.token_uri,
                issuer=self.client_email,
                options={"require": ["exp", "iat", "iss", "aud"]},
                leeway=30,
            )
        except jwt.InvalidSignatureError:
            return _invalid_grant("Invalid JWT Signature.")
        except jwt.InvalidTokenError as exc:
            return _invalid_grant(f"Invalid JWT: {exc}")
        lifetime = claims["exp"] - claims["iat"]
        if not 0 < lifetime <= 3600:
            return _invalid_grant("Invalid JWT: the lifetime must be positive and at most one hour.")
        scope = claims.get("scope")
        if not isinstance(scope, str) or _FCM_SCOPE not in scope.split():
            return _Reply(400, {"error": "invalid_scope", "error_description": f"The scope must include {_FCM_SCOPE}."})
        token = "standin." + secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = time.monotonic() + self.token_ttl
            self.token_requests += 1
        return _Reply(200, {"access_token": token, "expires_in": self.token_ttl, "token_type": "Bearer"})

    def _send(self, project: str, authorization: str, body: bytes) -> tuple[_Reply, Callable[[], None] | None]:
        """POST /v1/projects/{project}/messages:send: the reply, and what to do once it is written."""
        scheme, _, token = authorization.partition(" ")
        with self._lock:
            live = scheme.lower() == "bearer" and self._tokens.get(token.strip(), 0.0) > time.monotonic()
        if not live:
            return _unauthenticated(), None
        if project != self.project_id:
            return _error(404, "Requested entity was not found.", "NOT_FOUND"), None
        try:
            doc = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return _error(400, "Invalid JSON payload received.", "INVALID_ARGUMENT", "INVALID_ARGUMENT"), None
        problem = _check_wake(doc)
        if problem is not None:
            field, description = problem
            return _error(400, f"Invalid value at '{field}': {description}", "INVALID_ARGUMENT", "INVALID_ARGUMENT", field), None
        message: dict[str, Any] = doc["message"]
        with self._lock:
            answer = self._script.popleft() if self._script else None
        if answer is not None:
            reply = self._scripted(answer)
            if reply is not None:
                return reply, None
        push = PushReceived(message["token"], message, time.monotonic())
        with self._lock:
            self.received.append(push)
        name = f"projects/{self.project_id}/messages/{secrets.randbelow(10**19)}"
        return _Reply(200, {"name": name}), lambda: self._after_accept(push)

    def _scripted(self, answer: Answer) -> _Reply | None:
        """The reply a scripted answer asks for; None to accept the send."""
        if answer == "expire_token":
            with self._lock:
                self._tokens.clear()
            return _unauthenticated()
        if answer == "unregistered":
            return _error(404, "Requested entity was not found.", "NOT_FOUND", "UNREGISTERED")
        if answer == "invalid_token":
            text = "The registration token is not a valid FCM registration token"
            return _error(400, text, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "message.token")
        if answer == "sender_id_mismatch":
            return _error(403, "SenderId mismatch", "PERMISSION_DENIED", "SENDER_ID_MISMATCH")
        status, retry_after = answer if isinstance(answer, tuple) else (int(answer), "")
        if 200 <= status < 300:
            return None
        rpc_status, fcm_code = _STATUS_OF.get(status, ("UNAVAILABLE" if status >= 500 else "FAILED_PRECONDITION", ""))
        if status == 400:  # a 400 about the message, never the token
            reply = _error(status, "Invalid value at 'message.android.ttl'", rpc_status, fcm_code, "message.android.ttl")
        elif status == 401:
            reply = _unauthenticated()
        else:
            reply = _error(status, f"scripted {status}", rpc_status, fcm_code)
        if retry_after:
            reply = _Reply(reply.status, reply.doc, (("Retry-After", retry_after),))
        return reply

    def _after_accept(self, push: PushReceived) -> None:
        data = dict(push.message["data"])
        with self._lock:
            hooks = [deliver for prefix, deliver in self._hooks if push.token.startswith(prefix)]
        for deliver in hooks:
            try:
                deliver(push.token, data)
            except Exception:
                log.exception("fcm stand-in: a forward_to hook failed")
        match = _LOOPBACK_TOKEN.fullmatch(push.token)
        if match is None or not 0 < int(match["port"]) < 65536:
            return
        thread = threading.Thread(
            target=_forward, args=(int(match["port"]), match["phone"], data), name="fcm-standin-forward", daemon=True
        )
        with self._lock:
            if self._closed:
                return
            self._forwards = [t for t in self._forwards if t.is_alive()]
            thread.start()  # under the lock: close() never joins a thread not yet started
            self._forwards.append(thread)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the bench wakes many phones at once


def _handler_for(standin: FcmStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the sender's pooled clients expect

        def setup(self) -> None:
            super().setup()
            standin._track(self.connection, True)

        def finish(self) -> None:
            try:
                super().finish()
            finally:
                standin._track(self.connection, False)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the request line is harmless, but tests stay quiet

        def do_GET(self) -> None:
            self._reply(_error(404, "Not found.", "NOT_FOUND"))

        def do_POST(self) -> None:
            try:
                length = int(self.headers.get("content-length") or "0")
            except ValueError:
                length = -1
            if not 0 <= length <= _MAX_BODY:
                self.close_connection = True
                self._reply(_error(413 if length > 0 else 400, "Bad request length.", "INVALID_ARGUMENT"))
                return
            body = self.rfile.read(length)
            path = urlsplit(self.path).path
            after: Callable[[], None] | None = None
            if path == "/token":
                reply = standin._grant(body)
            elif (match := _SEND_PATH.fullmatch(path)) is not None:
                reply, after = standin._send(match["project"], self.headers.get("authorization", ""), body)
            else:
                reply = _error(404, "Not found.", "NOT_FOUND")
            self._reply(reply)
            if after is not None:
                after()

        def _reply(self, reply: _Reply) -> None:
            data = json.dumps(reply.doc).encode()
            self.send_response(reply.status)
            self.send_header("content-type", "application/json; charset=UTF-8")
            self.send_header("content-length", str(len(data)))
            for name, value in reply.headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()

    return Handler


def _check_wake(doc: Any) -> tuple[str, str] | None:
    """(field, problem) for anything but the exact wake-up shape; None when it is one."""
    if not isinstance(doc, dict) or set(doc) != {"message"} or not isinstance(doc["message"], dict):
        return "message", "the request must be exactly {message: {...}}"
    message = doc["message"]
    if "notification" in message:
        return "message.notification", "a wake-up carries no notification"
    extra = sorted(set(message) - {"token", "data", "android"})
    if extra:
        return f"message.{extra[0]}", "not part of a wake-up"
    token = message.get("token")
    if not isinstance(token, str) or not token:
        return "message.token", "a registration token is required"
    data = message.get("data")
    if (
        not isinstance(data, dict)
        or set(data) != {"type", "nonce"}
        or data["type"] != "wake"
        or not isinstance(data["nonce"], str)
        or not data["nonce"]
    ):
        return "message.data", "exactly {type: wake, nonce: <string>} is expected"
    android = message.get("android")
    if not isinstance(android, dict) or set(android) != {"priority", "ttl", "collapse_key"}:
        return "message.android", "exactly priority, ttl and collapse_key are expected"
    if android["priority"] != "high":
        return "message.android.priority", "a wake-up must be high priority"
    if not isinstance(android["ttl"], str) or not _TTL.fullmatch(android["ttl"]):
        return "message.android.ttl", "a duration in seconds such as 60s is expected"
    if not isinstance(android["collapse_key"], str) or not android["collapse_key"]:
        return "message.android.collapse_key", "a collapse key is required"
    return None


def _error(status: int, message: str, rpc_status: str, fcm_code: str = "", field: str = "") -> _Reply:
    """FCM v1's error body: google.rpc.Status with an FcmError (and a BadRequest naming the field)."""
    details: list[dict[str, Any]] = []
    if fcm_code:
        details.append({"@type": _FCM_ERROR, "errorCode": fcm_code})
    if field:
        details.append({"@type": _BAD_REQUEST, "fieldViolations": [{"field": field, "description": message}]})
    error: dict[str, Any] = {"code": status, "message": message, "status": rpc_status}
    if details:
        error["details"] = details
    return _Reply(status, {"error": error})


def _unauthenticated() -> _Reply:
    return _error(
        401,
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid "
        "authentication credential.",
        "UNAUTHENTICATED",
    )


def _invalid_grant(description: str) -> _Reply:
    return _Reply(400, {"error": "invalid_grant", "error_description": description})


def _forward(port: int, phone: str, data: dict[str, Any]) -> None:
    """POST the wake-up to a simulated phone on 127.0.0.1; any failure is the phone's problem."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=_FORWARD_TIMEOUT)
    try:
        body = json.dumps(data).encode()
        conn.request("POST", f"/wake/{phone}", body=body, headers={"content-type": "application/json"})
        conn.getresponse().read()
    except (OSError, http.client.HTTPException):
        pass
    finally:
        conn.close()
