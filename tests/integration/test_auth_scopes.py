"""Every RPC x scope (RELIABILITY 20), walked from the service descriptors so that a new RPC
without an entry in `gateway.auth.scopes.RPC_SCOPES` fails the suite.

For each RPC that needs an access token: no token is UNAUTHENTICATED; a token with every scope
but the one it needs is PERMISSION_DENIED naming that scope; a token with only that scope gets
past authorization (any other answer: the default request may well be invalid)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from smsgw.v1 import audit_pb2, auth_pb2, devices_pb2, inbound_pb2, messages_pb2, otp_pb2, webhooks_pb2

from gateway.auth.scopes import ALL_SCOPES, PUBLIC, RPC_SCOPES, Scope
from smsgw_client import Client, InvalidArgument
from tests.helpers.auth import bearer, raw_error, running_server, sign_in
from tests.helpers.server import ServerProcess

_MODULES = (auth_pb2, audit_pb2, devices_pb2, messages_pb2, inbound_pb2, webhooks_pb2, otp_pb2)


def _rpcs() -> dict[str, MethodDescriptor]:
    """Every RPC of every smsgw.v1 service, as "/smsgw.v1.Service/Method"."""
    found = {}
    for module in _MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                found[f"/{service.full_name}/{method.name}"] = method
    return found


RPCS = _rpcs()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("scopes")) as proc:
        yield proc


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_target) as ch:
        yield ch


_tokens: dict[tuple[str, frozenset[Scope]], str] = {}


def _token(server: ServerProcess, scopes: frozenset[Scope]) -> str:
    """An admin access token carrying exactly `scopes` (one sign-in per distinct set)."""
    key = (server.grpc_target, scopes)
    if key not in _tokens:
        pair = sign_in(server.grpc_target, "admin", server.admin_password, scopes=sorted(scopes), access_ttl=600)
        assert frozenset(pair.scopes) == scopes
        _tokens[key] = pair.access_token
    return _tokens[key]


def _call(channel: grpc.Channel, rpc: str, token: str | None, *, timeout: float = 10.0) -> tuple[grpc.StatusCode, str]:
    method = RPCS[rpc]
    request = message_factory.GetMessageClass(method.input_type)()
    response = message_factory.GetMessageClass(method.output_type)
    return raw_error(
        channel, rpc, request, response, metadata=bearer(token) if token is not None else None,
        stream=method.server_streaming, timeout=timeout,
    )


def test_the_walk_finds_the_services() -> None:
    services = {rpc.split("/")[1] for rpc in RPCS}
    assert services == {
        "smsgw.v1.AuthService", "smsgw.v1.AuditService", "smsgw.v1.DeviceService", "smsgw.v1.MessageService",
        "smsgw.v1.InboundService", "smsgw.v1.WebhookService", "smsgw.v1.OtpService",
    }


def test_every_scope_entry_names_a_real_rpc() -> None:
    assert set(RPC_SCOPES) - set(RPCS) == set()


def test_only_the_documented_rpcs_are_public() -> None:
    # auth.proto: IssueToken (Basic), RefreshToken (its refresh token) and CreateAccount take
    # no access token; every other RPC of every service does.
    public = {rpc for rpc, scope in RPC_SCOPES.items() if scope is PUBLIC}
    assert public == {
        "/smsgw.v1.AuthService/CreateAccount", "/smsgw.v1.AuthService/IssueToken", "/smsgw.v1.AuthService/RefreshToken",
    }


@pytest.mark.parametrize("rpc", sorted(RPCS), ids=lambda rpc: rpc.rsplit(".", 1)[-1])
def test_rpc_needs_its_scope(server: ServerProcess, channel: grpc.Channel, rpc: str) -> None:
    assert rpc in RPC_SCOPES, f"{rpc} has no scope in gateway.auth.scopes.RPC_SCOPES"
    scope = RPC_SCOPES[rpc]
    if scope is PUBLIC:
        pytest.skip("public: carries its own credential")
    assert isinstance(scope, Scope)

    code, _ = _call(channel, rpc, None)
    assert code == grpc.StatusCode.UNAUTHENTICATED, "no token"

    code, details = _call(channel, rpc, _token(server, ALL_SCOPES - {scope}))
    assert code == grpc.StatusCode.PERMISSION_DENIED, f"every scope but {scope}"
    assert str(scope) in details

    # A watch without events runs until its deadline: DEADLINE_EXCEEDED is an answer too.
    code, details = _call(channel, rpc, _token(server, frozenset({scope})), timeout=2.0)
    assert code not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED), (code, details)
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNKNOWN), details


def test_a_scope_does_not_open_other_rpcs(server: ServerProcess, channel: grpc.Channel) -> None:
    """A token with one scope is refused by every RPC that needs another."""
    for scope in sorted({s for s in RPC_SCOPES.values() if s is not PUBLIC}):
        token = _token(server, frozenset({scope}))
        for rpc, needed in RPC_SCOPES.items():
            if needed is PUBLIC or needed == scope:
                continue
            code, details = _call(channel, rpc, token)
            assert code == grpc.StatusCode.PERMISSION_DENIED, (scope, rpc, code)
            assert str(needed) in details


def test_issue_token_refuses_unknown_scopes(server: ServerProcess) -> None:
    with Client(server.grpc_target) as client, pytest.raises(InvalidArgument) as caught:
        client.issue_token("admin", server.admin_password, scopes=["messages:send", "root:everything"])
    assert [f for f, _ in caught.value.field_violations] == ["scopes"]



def test_an_unknown_method_is_unimplemented_every_time(channel: grpc.Channel) -> None:
    """The interceptor wraps each known method's handler once and keeps it; a method the
    server does not have is not kept, and stays UNIMPLEMENTED (not a cached wrapper of None)."""
    for name in ("/smsgw.v1.MessageService/NoSuchMethod", "/smsgw.v1.NoSuchService/Send", "/smsgw.v1.MessageService/NoSuchMethod"):
        call = channel.unary_unary(name, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as caught:
            call(b"", timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED, name
