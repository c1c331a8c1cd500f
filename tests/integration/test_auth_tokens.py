"""Accounts and JWTs over the real API (issue 3; RELIABILITY 16-18): sign-in with Basic
credentials, every way a bad access token is refused at a real RPC, refresh rotation with reuse
detection, revocation, accounts in public and private mode, and the operator's commands."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from smsgw.v1 import auth_pb2, auth_pb2_grpc, devices_pb2, devices_pb2_grpc

from gateway.auth.tokens import _kid
from smsgw_client import (
    AlreadyExists,
    Client,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unauthenticated,
)
from tests.helpers.auth import bearer, craft, jwt_parts, running_server, sign_in, wait_until
from tests.helpers.raw_phone import pair_raw
from tests.helpers.server import SMSGW, ServerProcess

PASSWORD = "correct horse battery staple"
PRIVATE_TOKEN = "p" * 40


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Public mode, HS256 with the secret in DIR/jwt.secret, the default 10 s refresh grace;
    deny lists re-read every 0.5 s (for `smsgw users disable`)."""
    with running_server(tmp_path_factory.mktemp("tokens"), SMSGW_JOBS__EXPIRY_INTERVAL="0.5") as proc:
        yield proc


@pytest.fixture(scope="module")
def no_grace_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("nograce"), SMSGW_JWT__REFRESH_GRACE="0") as proc:
        yield proc


@pytest.fixture(scope="module")
def es256_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path_factory.mktemp("es256") / "jwt.pem"
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)
    return path, key


@pytest.fixture(scope="module")
def es256_private_server(
    tmp_path_factory: pytest.TempPathFactory, es256_key: tuple[Path, ec.EllipticCurvePrivateKey]
) -> Iterator[ServerProcess]:
    """ES256 signing, and private mode (accounts only from `smsgw users add`)."""
    with running_server(
        tmp_path_factory.mktemp("es256-private"),
        SMSGW_JWT__ALGORITHM="ES256",
        SMSGW_JWT__PRIVATE_KEY_FILE=str(es256_key[0]),
        SMSGW_GATEWAY__MODE="private",
        SMSGW_GATEWAY__PRIVATE_TOKEN=PRIVATE_TOKEN,
    ) as proc:
        yield proc


def _list_devices(target: str, token: str) -> grpc.StatusCode:
    """The status of ListDevices with `authorization: Bearer <token>`."""
    with grpc.insecure_channel(target) as channel:
        stub = devices_pb2_grpc.DeviceServiceStub(channel)
        try:
            stub.ListDevices(devices_pb2.ListDevicesRequest(), metadata=bearer(token), timeout=10)
        except grpc.RpcError as error:
            assert isinstance(error, grpc.Call)
            return error.code()
    return grpc.StatusCode.OK


def _issue_raw(target: str, authorization: str) -> grpc.StatusCode:
    with grpc.insecure_channel(target) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        try:
            stub.IssueToken(auth_pb2.IssueTokenRequest(), metadata=[("authorization", authorization)], timeout=10)
        except grpc.RpcError as error:
            assert isinstance(error, grpc.Call)
            return error.code()
    return grpc.StatusCode.OK


def _smsgw(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in (env or os.environ).items() if k not in ("SMSGW_TOKEN", "SMSGW_CREDENTIALS")}
    return subprocess.run([SMSGW, *args], input=stdin, capture_output=True, text=True, timeout=60, env=environ)


# ---- IssueToken ------------------------------------------------------------------------


def test_issue_token_gives_a_working_access_and_a_refresh_jwt(server: ServerProcess) -> None:
    pair = sign_in(server.grpc_target, "admin", server.admin_password)
    assert pair.token_type == "Bearer"
    access_header, access = jwt_parts(pair.access_token)
    refresh_header, refresh = jwt_parts(pair.refresh_token)
    assert access_header["typ"] == "at+jwt" and refresh_header["typ"] != "at+jwt"
    assert access_header["alg"] == refresh_header["alg"] == "HS256"
    assert access["jti"] == pair.access_jti and refresh["jti"] == pair.refresh_jti
    assert access["jti"] != refresh["jti"] and access["fid"] == refresh["fid"]
    for claim in ("exp", "iat", "iss", "aud", "sub", "jti", "scope"):
        assert claim in access and claim in refresh
    assert set(access["scope"].split()) == set(pair.scopes)
    assert access["exp"] - access["iat"] == 900  # the default access TTL
    with Client(server.grpc_target, pair.access_token) as client:
        client.list_devices()


@pytest.mark.parametrize(
    ("username", "password"),
    [("admin", "not the admin password"), ("nobody-here", PASSWORD), ("admin", "")],
)
def test_issue_token_refuses_wrong_credentials(server: ServerProcess, username: str, password: str) -> None:
    with Client(server.grpc_target) as client, pytest.raises(Unauthenticated) as caught:
        client.issue_token(username, password)
    # One answer for a wrong password and an unknown user: usernames do not leak.
    assert caught.value.details == "wrong username or password"


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic !!!not-base64!!!",
        "Basic " + base64.b64encode(b"no-colon-here").decode(),
        "Basic " + base64.b64encode(b":password-without-user").decode(),
        "Basic ",
        "Bearer " + "x" * 40,
        "",
    ],
)
def test_issue_token_refuses_malformed_basic(server: ServerProcess, authorization: str) -> None:
    assert _issue_raw(server.grpc_target, authorization) == grpc.StatusCode.UNAUTHENTICATED


# ---- bad access tokens at a real RPC ---------------------------------------------------


def _now() -> int:
    return int(time.time())


def _expired(p: dict[str, Any]) -> None:
    p["iat"], p["exp"] = _now() - 3600, _now() - 120  # beyond the 30 s leeway


def _drop(claim: str) -> Callable[[dict[str, Any]], None]:
    return lambda p: p.pop(claim)


def _set(key: str, value: object) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.__setitem__(key, value)


OTHER_SECRET = b"an-entirely-different-secret-of-48-characters!!!"

# name -> (signing key: "server" / "other" / None, header change, payload change)
BAD_TOKENS: dict[str, tuple[str | None, Callable[[dict[str, Any]], None], Callable[[dict[str, Any]], None]]] = {
    "expired": ("server", lambda h: None, _expired),
    "signed with another secret": ("other", lambda h: None, lambda p: None),
    "alg none": (None, _set("alg", "none"), lambda p: None),
    "alg none, no kid": (None, lambda h: (h.pop("kid"), h.__setitem__("alg", "none")), lambda p: None),
    "wrong audience": ("server", lambda h: None, _set("aud", "another-service")),
    "wrong issuer": ("server", lambda h: None, _set("iss", "someone-else")),
    "refresh typ": ("server", _set("typ", "rt+jwt"), lambda p: None),
    "no typ": ("server", lambda h: h.pop("typ"), lambda p: None),
    "missing jti": ("server", lambda h: None, _drop("jti")),
    "missing exp": ("server", lambda h: None, _drop("exp")),
    "missing scope": ("server", lambda h: None, _drop("scope")),
    "missing sub": ("server", lambda h: None, _drop("sub")),
    "unknown kid": ("server", _set("kid", "0123456789abcdef"), lambda p: None),
    "jku header": ("server", _set("jku", "https://attacker.example/jwks.json"), lambda p: None),
    "x5u header": ("server", _set("x5u", "https://attacker.example/cert.pem"), lambda p: None),
    "unknown scope": ("server", lambda h: None, _set("scope", "messages:send root:all")),
}


@pytest.fixture(scope="module")
def admin_pair(server: ServerProcess) -> auth_pb2.TokenPair:
    return sign_in(server.grpc_target, "admin", server.admin_password)


@pytest.fixture(scope="module")
def secret(server: ServerProcess) -> bytes:
    return (server.data_dir / "jwt.secret").read_text().strip().encode()


def test_crafting_is_faithful(server: ServerProcess, admin_pair: auth_pb2.TokenPair, secret: bytes) -> None:
    """The baseline of every bad token below: re-signed unchanged, it is accepted, so each of
    them is refused for the one property it changes."""
    header, _ = jwt_parts(admin_pair.access_token)
    assert header["kid"] == _kid(secret)
    assert _list_devices(server.grpc_target, craft(admin_pair.access_token, secret)) == grpc.StatusCode.OK
    fresh = craft(admin_pair.access_token, secret, payload=_set("iat", _now() - 5))
    assert _list_devices(server.grpc_target, fresh) == grpc.StatusCode.OK


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
def test_bad_access_token_is_unauthenticated(
    server: ServerProcess, admin_pair: auth_pb2.TokenPair, secret: bytes, case: str
) -> None:
    key_name, header, payload = BAD_TOKENS[case]
    key = {"server": secret, "other": OTHER_SECRET, None: None}[key_name]
    token = craft(admin_pair.access_token, key, header=header, payload=payload)
    assert _list_devices(server.grpc_target, token) == grpc.StatusCode.UNAUTHENTICATED
    assert _list_devices(server.grpc_target, admin_pair.access_token) == grpc.StatusCode.OK


def test_refresh_token_is_not_an_access_token(server: ServerProcess, admin_pair: auth_pb2.TokenPair) -> None:
    assert _list_devices(server.grpc_target, admin_pair.refresh_token) == grpc.StatusCode.UNAUTHENTICATED
    # ... and an access token is not a refresh token.
    with Client(server.grpc_target) as client, pytest.raises(Unauthenticated):
        client.refresh_token(admin_pair.access_token)


def test_garbage_and_missing_bearer_are_unauthenticated(server: ServerProcess) -> None:
    for token in ("not-a-jwt", "a.b.c", "", " "):
        assert _list_devices(server.grpc_target, token) == grpc.StatusCode.UNAUTHENTICATED
    with Client(server.grpc_target) as client, pytest.raises(Unauthenticated):
        client.list_devices()


def test_es256_server_refuses_hs256_made_with_its_public_key(
    es256_private_server: ServerProcess, es256_key: tuple[Path, ec.EllipticCurvePrivateKey]
) -> None:
    server = es256_private_server
    public = es256_key[1].public_key()
    public_pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    public_der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    es_kid = _kid(public_der)
    pair = sign_in(server.grpc_target, "admin", server.admin_password)  # sign-in works with ES256
    header, _ = jwt_parts(pair.access_token)
    assert header["alg"] == "ES256" and header["kid"] == es_kid
    assert _list_devices(server.grpc_target, pair.access_token) == grpc.StatusCode.OK
    for key in (public_pem, public_der):
        confused = craft(pair.access_token, key, header=_set("alg", "HS256"))
        assert jwt_parts(confused)[0]["kid"] == es_kid
        assert _list_devices(server.grpc_target, confused) == grpc.StatusCode.UNAUTHENTICATED
    unsigned = craft(pair.access_token, None, header=_set("alg", "none"))
    assert _list_devices(server.grpc_target, unsigned) == grpc.StatusCode.UNAUTHENTICATED
    # The refresh token of an ES256 sign-in rotates too.
    with Client(server.grpc_target) as client:
        rotated = client.refresh_token(pair.refresh_token)
    assert _list_devices(server.grpc_target, rotated.access_token) == grpc.StatusCode.OK


# ---- refresh rotation ------------------------------------------------------------------


def test_refresh_rotates_and_a_retry_within_the_grace_gets_the_same_pair(server: ServerProcess) -> None:
    first = sign_in(server.grpc_target, "admin", server.admin_password)
    with Client(server.grpc_target) as client:
        second = client.refresh_token(first.refresh_token)
        assert {second.access_jti, second.refresh_jti}.isdisjoint({first.access_jti, first.refresh_jti})
        assert second.access_token != first.access_token and second.refresh_token != first.refresh_token
        assert set(second.scopes) == set(first.scopes)
        assert _list_devices(server.grpc_target, second.access_token) == grpc.StatusCode.OK
        retry = client.refresh_token(first.refresh_token)  # at once: well within the 10 s grace
        assert (retry.access_token, retry.refresh_token) == (second.access_token, second.refresh_token)
        assert (retry.access_jti, retry.refresh_jti) == (second.access_jti, second.refresh_jti)
        # No alarm was raised: the family lives on and rotates again.
        third = client.refresh_token(second.refresh_token)
    assert _list_devices(server.grpc_target, third.access_token) == grpc.StatusCode.OK
    assert _list_devices(server.grpc_target, second.access_token) == grpc.StatusCode.OK


def test_reusing_a_spent_refresh_token_revokes_the_family(no_grace_server: ServerProcess) -> None:
    server = no_grace_server
    first = sign_in(server.grpc_target, "admin", server.admin_password)
    bystander = sign_in(server.grpc_target, "admin", server.admin_password)  # another sign-in
    with Client(server.grpc_target) as client:
        second = client.refresh_token(first.refresh_token)
        assert _list_devices(server.grpc_target, second.access_token) == grpc.StatusCode.OK
        with pytest.raises(Unauthenticated):
            client.refresh_token(first.refresh_token)  # the grace is 0: a reuse
        for access in (second.access_token, first.access_token):
            assert _list_devices(server.grpc_target, access) == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(Unauthenticated):
            client.refresh_token(second.refresh_token)
    assert _list_devices(server.grpc_target, bystander.access_token) == grpc.StatusCode.OK
    with Client(server.grpc_target) as client:
        client.refresh_token(bystander.refresh_token)


def test_refresh_of_garbage_is_refused(server: ServerProcess) -> None:
    with Client(server.grpc_target) as client:
        with pytest.raises(Unauthenticated):
            client.refresh_token("not-a-jwt")
        with pytest.raises(InvalidArgument) as caught:
            client.refresh_token("")
    assert [f for f, _ in caught.value.field_violations] == ["refresh_token"]


# ---- RevokeToken -----------------------------------------------------------------------


def test_revoke_by_access_jti_kills_that_token_only(server: ServerProcess) -> None:
    target = server.grpc_target
    victim = sign_in(target, "admin", server.admin_password)
    other = sign_in(target, "admin", server.admin_password)
    with Client(target, other.access_token) as client:
        assert client.revoke_token(victim.access_jti) == 1
    assert _list_devices(target, victim.access_token) == grpc.StatusCode.UNAUTHENTICATED
    assert _list_devices(target, other.access_token) == grpc.StatusCode.OK
    # The sign-in itself lives on: its refresh token still gives a working pair.
    with Client(target) as client:
        renewed = client.refresh_token(victim.refresh_token)
    assert _list_devices(target, renewed.access_token) == grpc.StatusCode.OK
    # A token may revoke itself.
    with Client(target, other.access_token) as client:
        assert client.revoke_token(other.access_jti) == 1
    assert _list_devices(target, other.access_token) == grpc.StatusCode.UNAUTHENTICATED


def test_revoke_by_refresh_jti_kills_the_family(server: ServerProcess) -> None:
    target = server.grpc_target
    victim = sign_in(target, "admin", server.admin_password)
    with Client(target) as client:
        rotated = client.refresh_token(victim.refresh_token)
    manager = sign_in(target, "admin", server.admin_password)
    with Client(target, manager.access_token) as client:
        assert client.revoke_token(rotated.refresh_jti) >= 2  # at least the live access + refresh
    for access in (victim.access_token, rotated.access_token):
        assert _list_devices(target, access) == grpc.StatusCode.UNAUTHENTICATED
    with Client(target) as client:
        for refresh in (victim.refresh_token, rotated.refresh_token):
            with pytest.raises(Unauthenticated):
                client.refresh_token(refresh)
    assert _list_devices(target, manager.access_token) == grpc.StatusCode.OK


def test_revoke_of_another_owners_or_an_unknown_jti_is_not_found(server: ServerProcess) -> None:
    target = server.grpc_target
    with Client(target) as client:
        client.create_account("revoke-stranger", PASSWORD)
    stranger = sign_in(target, "revoke-stranger", PASSWORD)
    admin = sign_in(target, "admin", server.admin_password)
    with Client(target, stranger.access_token) as client:
        for jti in (admin.access_jti, admin.refresh_jti, "01JNOSUCHTOKEN000000000000"):
            with pytest.raises(NotFound):
                client.revoke_token(jti)
        with pytest.raises(InvalidArgument):
            client.revoke_token("")
    assert _list_devices(target, admin.access_token) == grpc.StatusCode.OK
    with Client(target) as client:
        client.refresh_token(admin.refresh_token)


# ---- start-up --------------------------------------------------------------------------


def test_a_short_jwt_secret_stops_the_start_with_status_2(tmp_path: Path) -> None:
    env = {**os.environ, "SMSGW_JWT__SECRET": "short"}
    proc = subprocess.Popen(
        [SMSGW, "serve", "--data-dir", str(tmp_path / "data"), "--grpc-listen", "127.0.0.1:0",
         "--device-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # only the process started here, by its pid
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 2, out + err
    assert "jwt.secret" in err and "32" in err
    assert "Traceback" not in err
    assert not (tmp_path / "data" / "endpoints.json").exists()


# ---- accounts --------------------------------------------------------------------------


def test_create_account_in_public_mode_owns_nothing_of_admins(server: ServerProcess) -> None:
    target = server.grpc_target
    admin = sign_in(target, "admin", server.admin_password)
    phone, _ = pair_raw(target, admin.access_token, server.device_url)
    phone.ws.close()
    with Client(target, admin.access_token) as client:
        sent = client.send_message(["+15551230001"], "admin's own")
        assert client.list_devices().devices
    with Client(target) as client:
        account = client.create_account("alice.smith@example", PASSWORD)
    assert account.username == "alice.smith@example" and account.id
    assert set(account.scopes) == set(admin.scopes)
    alice = sign_in(target, "alice.smith@example", PASSWORD)
    with Client(target, alice.access_token) as client:
        assert list(client.list_devices().devices) == []
        assert list(client.list_messages().messages) == []
        with pytest.raises(NotFound):
            client.get_message(sent.id)


def test_create_account_refuses_duplicates_and_bad_fields(server: ServerProcess) -> None:
    with Client(server.grpc_target) as client:
        client.create_account("dupe-user", PASSWORD)
        with pytest.raises(AlreadyExists):
            client.create_account("dupe-user", PASSWORD + "-other")
        with pytest.raises(AlreadyExists):
            client.create_account("admin", PASSWORD)
        for username, password, fields in (
            ("ab", PASSWORD, {"username"}),
            ("has space", PASSWORD, {"username"}),
            ("x" * 65, PASSWORD, {"username"}),
            ("", PASSWORD, {"username"}),
            ("fine-name", "short", {"password"}),
            ("fine-name", "p" * 257, {"password"}),
            ("no/slash", "short", {"username", "password"}),
        ):
            with pytest.raises(InvalidArgument) as caught:
                client.create_account(username, password)
            assert {f for f, _ in caught.value.field_violations} == fields, (username, password)
        with pytest.raises(Unauthenticated):
            client.issue_token("fine-name", "short")  # nothing was created


def test_create_account_in_private_mode_is_failed_precondition(es256_private_server: ServerProcess) -> None:
    with Client(es256_private_server.grpc_target) as client:
        with pytest.raises(FailedPrecondition):
            client.create_account("would-be-user", PASSWORD)
        with pytest.raises(Unauthenticated):
            client.issue_token("would-be-user", PASSWORD)


def test_users_add_and_disable_from_the_cli(server: ServerProcess) -> None:
    target, data_dir = server.grpc_target, str(server.data_dir)
    added = _smsgw("users", "add", "cli-bob", "--password-stdin", "--data-dir", data_dir, stdin=PASSWORD + "\n", env=server.env)
    assert added.returncode == 0, added.stderr
    assert PASSWORD not in added.stdout + added.stderr
    bob = sign_in(target, "cli-bob", PASSWORD)
    assert _list_devices(target, bob.access_token) == grpc.StatusCode.OK
    disabled = _smsgw("users", "disable", "cli-bob", "--data-dir", data_dir, env=server.env)
    assert disabled.returncode == 0, disabled.stderr
    # The server re-reads its deny lists every 0.5 s here.
    assert wait_until(lambda: _list_devices(target, bob.access_token) == grpc.StatusCode.UNAUTHENTICATED, timeout=10)
    with Client(target) as client:
        with pytest.raises(Unauthenticated):
            client.issue_token("cli-bob", PASSWORD)
        with pytest.raises(Unauthenticated):
            client.refresh_token(bob.refresh_token)


def test_login_devices_list_and_logout_from_the_cli(server: ServerProcess, tmp_path: Path) -> None:
    target = server.grpc_target
    credentials = tmp_path / "credentials.json"
    login = _smsgw("login", "--server", target, "--password-file", str(server.data_dir / "admin.password"),
                   "--credentials", str(credentials))
    assert login.returncode == 0, login.stderr
    assert server.admin_password not in login.stdout
    assert oct(credentials.stat().st_mode & 0o777) == "0o600"
    stored = json.loads(credentials.read_text())
    listed = _smsgw("devices", "list", "--server", target, "--credentials", str(credentials))
    assert listed.returncode == 0, listed.stderr
    assert _list_devices(target, stored["access_token"]) == grpc.StatusCode.OK
    logout = _smsgw("logout", "--server", target, "--credentials", str(credentials))
    assert logout.returncode == 0, logout.stderr
    assert not credentials.exists()
    assert _list_devices(target, stored["access_token"]) == grpc.StatusCode.UNAUTHENTICATED
    with Client(target) as client, pytest.raises(Unauthenticated):
        client.refresh_token(stored["refresh_token"])
    again = _smsgw("devices", "list", "--server", target, "--credentials", str(credentials))
    assert again.returncode == 2 and "smsgw login" in again.stderr
