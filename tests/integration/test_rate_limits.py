"""Rate limits against a real server (RELIABILITY 21, 26): the per-token bucket, the per-owner
daily segment cap, the failed-authentication lockout and the per-source limit on sign-ins.
Each refusal is RESOURCE_EXHAUSTED with RetryInfo and a QuotaFailure naming its subject, and
nothing is stored for it. Every server here sets its own limits (ServerProcess is lenient by
default). No assertion is made on elapsed time; waits for a refill are bounded polls."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from pathlib import Path

import pytest
from smsgw.v1 import messages_pb2
from smsgw_client import AlreadyExists, AsyncClient, Client, ResourceExhausted, Unauthenticated

from tests.helpers.server import ServerProcess

RATE, BURST = 5, 10
OVER_LIMIT = 1000  # the issue: "1,000 requests over the limit yield RESOURCE_EXHAUSTED"
SOURCE = "source:127.0.0.1"
PASSWORD = "correct horse battery staple"
_names = itertools.count()


def _server(tmp_path_factory: pytest.TempPathFactory, name: str, limits: dict[str, str]) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp(name) / "data", env={f"SMSGW_LIMITS__{k}": v for k, v in limits.items()})
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def _wait_until_accepted(call, *, limit: float = 10.0):  # type: ignore[no-untyped-def]
    """Retry `call` after each refusal's retry_delay (capped) until it passes; bounded."""
    deadline = time.monotonic() + limit
    while True:
        try:
            return call()
        except ResourceExhausted as exc:
            if time.monotonic() > deadline:
                raise
            time.sleep(min(max(exc.retry_delay or 0.0, 0.02), 0.5))


def _assert_refusal(exc: ResourceExhausted, subject: str, max_delay: float) -> None:
    assert exc.retry_delay is not None and 0 < exc.retry_delay <= max_delay, exc.retry_delay
    assert [s for s, _ in exc.quota_violations] == [subject], exc.quota_violations
    assert all(d for _, d in exc.quota_violations)


# ---- per-token bucket ------------------------------------------------------------


@pytest.fixture(scope="module")
def bucket_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _server(tmp_path_factory, "bucket", {"RATE_PER_TOKEN": str(RATE), "BURST_PER_TOKEN": str(BURST)})


async def _hammer(target: str, token: str, prefix: str) -> tuple[list[str], list[tuple[str, ResourceExhausted]]]:
    """Concurrent SendMessage calls until exactly OVER_LIMIT were refused (bounded)."""
    ok: list[str] = []
    refused: list[tuple[str, ResourceExhausted]] = []
    sent = 0
    async with AsyncClient(target, token) as client:
        for _ in range(40):
            if len(refused) >= OVER_LIMIT:
                break
            keys = [f"{prefix}-{sent + i}" for i in range(min(100, OVER_LIMIT - len(refused)))]
            sent += len(keys)
            results = await asyncio.gather(
                *(client.send_message(["+15551234567"], "rate limited?", idempotency_key=k) for k in keys),
                return_exceptions=True,
            )
            for key, result in zip(keys, results, strict=True):
                if isinstance(result, ResourceExhausted):
                    refused.append((key, result))
                elif isinstance(result, messages_pb2.Message):
                    assert result.idempotency_key == key
                    ok.append(key)
                else:
                    raise AssertionError(f"{key}: unexpected {result!r}")
    return ok, refused


def test_per_token_bucket_refuses_1000_over_the_limit_stores_none_of_them_and_recovers(
    bucket_server: ServerProcess,
) -> None:
    server = bucket_server
    with Client(server.grpc_target) as signer:
        limited = signer.issue_token("admin", server.admin_password, access_ttl=3600)
        reader = signer.issue_token("admin", server.admin_password, access_ttl=3600)

    ok, refused = asyncio.run(_hammer(server.grpc_target, limited.access_token, "bucket"))
    assert len(refused) == OVER_LIMIT
    assert len(ok) >= BURST  # the burst passes; refills during the run may add a few more
    for _, exc in refused:
        _assert_refusal(exc, f"token:{limited.access_jti}", 1 / RATE + 1e-3)

    # A second sign-in of the same owner has its own bucket: it reads what was stored.
    with Client(server.grpc_target, reader.access_token) as client:
        stored = {m.idempotency_key: m.id for m in client.export_messages(timeout=30)}
    assert sorted(stored) == sorted(ok)  # exactly the OK answers, each once
    assert not {key for key, _ in refused} & set(stored)

    # After a refill (~1/rate s, bounded poll) the limited token works again.
    with Client(server.grpc_target, limited.access_token) as client:
        message = _wait_until_accepted(lambda: client.send_message(["+15551234567"], "after refill", idempotency_key="after"))
    with Client(server.grpc_target, reader.access_token) as client:
        assert client.get_message(message.id).idempotency_key == "after"


def test_another_token_of_the_same_owner_is_not_limited(bucket_server: ServerProcess) -> None:
    server = bucket_server
    with Client(server.grpc_target) as signer:
        first = signer.issue_token("admin", server.admin_password, access_ttl=3600)
        second = signer.issue_token("admin", server.admin_password, access_ttl=3600)
    with Client(server.grpc_target, first.access_token) as a, Client(server.grpc_target, second.access_token) as b:
        refusal = None
        for i in range(20 * BURST):  # bounded: the bucket empties after about BURST calls
            try:
                a.list_devices()
            except ResourceExhausted as exc:
                refusal = exc
                break
        assert refusal is not None, "the first token was never limited"
        _assert_refusal(refusal, f"token:{first.access_jti}", 1 / RATE + 1e-3)
        # The second token's bucket is full: a burst of BURST calls passes (the last a read).
        for i in range(BURST - 1):
            b.send_message(["+15557654321"], f"other token {i}", idempotency_key=f"other-{i}")
        assert {m.idempotency_key for m in b.export_messages(timeout=30)} >= {f"other-{i}" for i in range(BURST - 1)}


# ---- per-owner daily segment cap ---------------------------------------------------


@pytest.fixture(scope="module")
def cap_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _server(tmp_path_factory, "cap", {"DAILY_SEGMENTS": "5"})


def _new_account(server: ServerProcess) -> tuple[str, Client]:
    """(owner id, a client signed in as a new account)."""
    username = f"cap-{next(_names)}"
    with Client(server.grpc_target) as anonymous:
        owner = anonymous.create_account(username, PASSWORD).id
        token = anonymous.issue_token(username, PASSWORD, access_ttl=3600).access_token
    return owner, Client(server.grpc_target, token)


def _refused_send(client: Client, numbers: list[str], text: str, key: str) -> ResourceExhausted:
    with pytest.raises(ResourceExhausted) as caught:
        client.send_message(numbers, text, idempotency_key=key)
    return caught.value


def _near_utc_midnight(t: datetime, slack: timedelta = timedelta(minutes=1)) -> bool:
    midnight = datetime.combine(t.date(), dtime(), UTC)
    return min(abs(t - midnight), abs(t - (midnight + timedelta(days=1)))) <= slack


def test_daily_segment_cap_one_recipient(cap_server: ServerProcess) -> None:
    owner, client = _new_account(cap_server)
    with client:
        first = [client.send_message(["+15550000001"], "hi", idempotency_key=f"one-{i}") for i in range(5)]
        assert all(m.parts == 1 for m in first)
        refusal = _refused_send(client, ["+15550000001"], "hi", "one-5")
        asked_at = datetime.now(UTC)
        _assert_refusal(refusal, f"owner:{owner}", 24 * 3600)
        assert _near_utc_midnight(asked_at + timedelta(seconds=refusal.retry_delay or 0)), refusal.retry_delay

        # A replay of a stored message is still answered, with the stored message.
        replay = client.send_message(["+15550000001"], "hi", idempotency_key="one-0")
        assert replay.id == first[0].id
        # The same key with other content is the idempotency error, not the cap.
        with pytest.raises(AlreadyExists):
            client.send_message(["+15550000001"], "other", idempotency_key="one-0")
        assert sorted(m.idempotency_key for m in client.export_messages(timeout=30)) == [f"one-{i}" for i in range(5)]


def test_daily_segment_cap_counts_recipients_and_parts_per_owner(cap_server: ServerProcess) -> None:
    owner, client = _new_account(cap_server)
    other_owner, other = _new_account(cap_server)
    two = ["+15550000002", "+15550000003"]
    with client, other:
        client.send_message(two, "to two", idempotency_key="two-0")  # 2 segments
        client.send_message(two, "to two", idempotency_key="two-1")  # 4
        _assert_refusal(_refused_send(client, two, "to two", "two-2"), f"owner:{owner}", 24 * 3600)  # would be 6
        client.send_message(["+15550000002"], "one more", idempotency_key="two-3")  # 5
        _assert_refusal(_refused_send(client, ["+15550000002"], "full", "two-4"), f"owner:{owner}", 24 * 3600)
        assert sorted(m.idempotency_key for m in client.export_messages(timeout=30)) == ["two-0", "two-1", "two-3"]

        # Another owner has a cap of its own; a 2-part text counts 2 per recipient.
        long_text = "x" * 200
        assert other.send_message(["+15550000004"], long_text, idempotency_key="long-0").parts == 2  # 2
        _assert_refusal(
            _refused_send(other, two, long_text, "long-1"), f"owner:{other_owner}", 24 * 3600
        )  # would be 6
        other.send_message(["+15550000004", "+15550000005", "+15550000006"], "three", idempotency_key="long-2")  # 5
        _assert_refusal(_refused_send(other, ["+15550000004"], "x", "long-3"), f"owner:{other_owner}", 24 * 3600)
        assert sorted(m.idempotency_key for m in other.export_messages(timeout=30)) == ["long-0", "long-2"]


# ---- failed-authentication lockout -----------------------------------------------------


@pytest.fixture
def lockout_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _server(tmp_path_factory, "lockout", {"AUTH_FAILURES": "3", "AUTH_LOCKOUT": "2"})


def _audit_rows(server: ServerProcess, action: str) -> list[tuple[str | None, str, str, str]]:
    """(owner_id, actor, source, detail) of every audit row (also those of no owner), oldest first."""
    db = sqlite3.connect(f"file:{Path(server.data_dir) / 'smsgw.db'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT owner_id, actor, source, detail FROM audit WHERE action = ? ORDER BY id", (action,)).fetchall()
    finally:
        db.close()


@pytest.mark.parametrize("kind", ["bearer", "basic"])
def test_failed_authentications_lock_the_address_out(lockout_server: ServerProcess, kind: str) -> None:
    server = lockout_server
    good = server.token  # signed in before any failure
    with Client(server.grpc_target, good) as client, Client(server.grpc_target, "not-a-token") as bad:
        client.list_devices()
        for _ in range(3):
            with pytest.raises(Unauthenticated):
                if kind == "bearer":
                    bad.list_devices()
                else:
                    bad.issue_token("admin", "wrong password, surely")
        # The address is locked: even the right password is refused, and a bad token is not
        # even looked at; a valid token still works (guessers behind a shared address must
        # not shut out the services that hold real tokens).
        with pytest.raises(ResourceExhausted) as caught:
            bad.issue_token("admin", server.admin_password)
        _assert_refusal(caught.value, SOURCE, 2 + 1e-3)
        with pytest.raises(ResourceExhausted) as caught:
            bad.list_devices()
        _assert_refusal(caught.value, SOURCE, 2 + 1e-3)
        client.list_devices()

        # The lockout lifts (bounded poll); then the audit log shows the failures.
        _wait_until_accepted(lambda: bad.issue_token("admin", server.admin_password))
        rows = [r for r in _audit_rows(server, "auth.failure") if r[2] == "127.0.0.1"]
        assert len(rows) == 3, rows  # the refusals while locked were not counted as failures
        assert "address locked out" in rows[-1][3] and not any("locked" in r[3] for r in rows[:-1])
        if kind == "basic":
            listed = client.list_audit_events(action="auth.failure").events  # newest first
            assert [(e.actor, e.source) for e in listed] == [("admin", "127.0.0.1")] * 3
            assert "address locked out" in listed[0].detail
            assert all("surely" not in e.detail for e in listed)  # no secrets
        else:
            assert all(owner is None for owner, *_ in rows)  # an unknown token names no owner


# ---- per-source limit on the unauthenticated RPCs ------------------------------------------


@pytest.fixture
def source_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # One sign-in every 20 s after a burst of 3: nothing refills while the test runs.
    yield from _server(tmp_path_factory, "source", {"RATE_PER_SOURCE": "0.05", "BURST_PER_SOURCE": "3"})


def test_per_source_limit_on_sign_ins(source_server: ServerProcess) -> None:
    server = source_server
    password = server.admin_password

    def sign_in(_: int) -> object:
        try:
            with Client(server.grpc_target) as client:
                return client.issue_token("admin", password, access_ttl=3600)
        except ResourceExhausted as exc:
            return exc

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(sign_in, range(10)))
    pairs = [r for r in results if not isinstance(r, ResourceExhausted)]
    refused = [r for r in results if isinstance(r, ResourceExhausted)]
    assert len(pairs) + len(refused) == 10
    assert len(pairs) >= 3 and refused
    for exc in refused:
        _assert_refusal(exc, SOURCE, 20 + 1e-3)

    with Client(server.grpc_target) as anonymous:
        with pytest.raises(ResourceExhausted):
            anonymous.create_account("someone-new", PASSWORD)
        with pytest.raises(ResourceExhausted):
            anonymous.refresh_token(pairs[0].refresh_token)  # type: ignore[attr-defined]
    # Authenticated RPCs are limited per token, not by the sign-in bucket; no token was
    # issued for a refused sign-in.
    with Client(server.grpc_target, pairs[0].access_token) as client:  # type: ignore[attr-defined]
        issued = client.list_audit_events(action="token.issue").events
        assert sorted(e.detail.split()[1] for e in issued) == sorted(p.access_jti for p in pairs)  # type: ignore[attr-defined]
        assert all(e.source == "127.0.0.1" for e in issued)
