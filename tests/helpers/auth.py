"""What the auth integration tests share: a server environment that never locks the test's own
address out, raw gRPC calls with a chosen `authorization`, and JWTs crafted by hand from a
real token so that exactly one property is wrong."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from smsgw_client import Client
from tests.helpers.server import ServerProcess

__all__ = [
    "AUTH_LIMITS",
    "b64url",
    "bearer",
    "craft",
    "jwt_parts",
    "raw_call",
    "raw_error",
    "running_server",
    "sign_in",
    "wait_until",
]

# These tests present many bad credentials from 127.0.0.1 on purpose; the lockout and the
# per-source sign-in limit are tested elsewhere (their own servers, their own values).
AUTH_LIMITS = {
    "SMSGW_LIMITS__AUTH_FAILURES": "100000",
    "SMSGW_LIMITS__RATE_PER_SOURCE": "100000",
    "SMSGW_LIMITS__BURST_PER_SOURCE": "100000",
}


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, payload) of a JWT, unverified."""
    header, payload, _ = token.split(".")
    return json.loads(_unb64url(header)), json.loads(_unb64url(payload))


def craft(
    token: str,
    hmac_key: bytes | None,
    *,
    header: Callable[[dict[str, Any]], None] = lambda h: None,
    payload: Callable[[dict[str, Any]], None] = lambda p: None,
) -> str:
    """`token` with its header and payload changed in place by the callbacks, signed with
    HMAC-SHA256 under `hmac_key` (None: no signature, as for `alg: none`)."""
    h, p = jwt_parts(token)
    header(h)
    payload(p)
    signing_input = f"{b64url(json.dumps(h).encode())}.{b64url(json.dumps(p).encode())}"
    if hmac_key is None:
        return signing_input + "."
    signature = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def raw_error(
    channel: grpc.Channel,
    method: str,
    request: Any,
    response_type: Any,
    *,
    metadata: list[tuple[str, str]] | None = None,
    stream: bool = False,
    timeout: float = 10.0,
) -> tuple[grpc.StatusCode, str]:
    """Call `method` ("/pkg.Service/Rpc") generically; returns the (code, details) it ends with.
    A server stream is read to its first message (or its end), then cancelled: OK."""
    kwargs = {"request_serializer": type(request).SerializeToString, "response_deserializer": response_type.FromString}
    try:
        if stream:
            call = channel.unary_stream(method, **kwargs)(request, metadata=metadata, timeout=timeout)
            try:
                next(call, None)
            finally:
                call.cancel()
        else:
            channel.unary_unary(method, **kwargs)(request, metadata=metadata, timeout=timeout)
    except grpc.RpcError as error:
        return _code_and_details(error)
    return grpc.StatusCode.OK, ""


def raw_call(channel: grpc.Channel, method: str, request: Any, response_type: Any, **kwargs: Any) -> grpc.StatusCode:
    """As `raw_error`, the code only."""
    return raw_error(channel, method, request, response_type, **kwargs)[0]


def _code_and_details(error: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    assert isinstance(error, grpc.Call)
    return error.code(), error.details() or ""


def sign_in(target: str, username: str, password: str, **kwargs: Any) -> Any:
    """A fresh TokenPair for `username`."""
    with Client(target) as client:
        return client.issue_token(username, password, **kwargs)


def wait_until(check: Callable[[], bool], *, timeout: float = 10.0, step: float = 0.1) -> bool:
    """Poll `check` until it is true or `timeout` seconds pass; returns its last answer."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


@contextmanager
def running_server(base: Path, **env: str) -> Iterator[ServerProcess]:
    """A `smsgw serve` under `base` (its own data directory and log) with AUTH_LIMITS and `env`."""
    proc = ServerProcess(base / "data", env={**AUTH_LIMITS, **env})
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
