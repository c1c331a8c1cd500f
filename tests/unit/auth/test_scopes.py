"""The one RPC -> scope table (RELIABILITY 20; DESIGN "Security") is complete, and
docs/security.md prints the same table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from smsgw.v1 import audit_pb2, auth_pb2, devices_pb2, inbound_pb2, messages_pb2, otp_pb2, webhooks_pb2

from gateway.auth.scopes import ALL_SCOPES, PUBLIC, RPC_SCOPES, Scope, parse_scopes

ROOT = Path(__file__).resolve().parents[3]
MODULES = (auth_pb2, audit_pb2, devices_pb2, inbound_pb2, messages_pb2, webhooks_pb2, otp_pb2)


def _rpcs() -> set[str]:
    return {
        f"/{service.full_name}/{method.name}"
        for module in MODULES
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }


def test_every_service_is_walked() -> None:
    services = {s.full_name for m in MODULES for s in m.DESCRIPTOR.services_by_name.values()}
    assert {
        "smsgw.v1.AuthService", "smsgw.v1.AuditService", "smsgw.v1.DeviceService", "smsgw.v1.MessageService",
        "smsgw.v1.InboundService", "smsgw.v1.WebhookService",
    } <= services


def test_every_rpc_has_a_scope_entry() -> None:
    missing = _rpcs() - set(RPC_SCOPES)
    assert not missing, f"RPCs without an entry in gateway.auth.scopes.RPC_SCOPES: {sorted(missing)}"


def test_every_entry_names_an_existing_rpc() -> None:
    stale = set(RPC_SCOPES) - _rpcs()
    assert not stale, f"RPC_SCOPES names RPCs that do not exist: {sorted(stale)}"


def test_entries_are_scopes_or_public() -> None:
    for rpc, scope in RPC_SCOPES.items():
        assert scope is PUBLIC or isinstance(scope, Scope), rpc


def test_only_credential_carrying_rpcs_are_public() -> None:
    public = {rpc for rpc, scope in RPC_SCOPES.items() if scope is PUBLIC}
    assert public == {
        "/smsgw.v1.AuthService/CreateAccount",
        "/smsgw.v1.AuthService/IssueToken",
        "/smsgw.v1.AuthService/RefreshToken",
    }


def test_parse_scopes() -> None:
    assert parse_scopes("") == frozenset()
    assert parse_scopes("messages:send  messages:read") == {Scope.MESSAGES_SEND, Scope.MESSAGES_READ}
    assert parse_scopes(["messages:send", "logs:read tokens:manage"]) == {
        Scope.MESSAGES_SEND, Scope.LOGS_READ, Scope.TOKENS_MANAGE
    }
    assert parse_scopes(" ".join(ALL_SCOPES)) == ALL_SCOPES
    with pytest.raises(ValueError, match="'admin'"):
        parse_scopes("messages:send admin")
    with pytest.raises(ValueError, match="MESSAGES:SEND"):
        parse_scopes(["MESSAGES:SEND"])


# ---- docs/security.md -----------------------------------------------------------------

_ROW = re.compile(r"^\|\s*`(?:smsgw\.v1\.)?(?P<service>\w+)\.(?P<rpc>\w+)`\s*\|\s*`(?P<scope>[\w:]+)`\s*\|")


def doc_scope_table(text: str) -> dict[str, str]:
    """RPC -> scope from lines `| `Service.Rpc` | `scope` | ...` ("public" for PUBLIC)."""
    table: dict[str, str] = {}
    for line in text.splitlines():
        m = _ROW.match(line.strip())
        if m:
            rpc = f"/smsgw.v1.{m['service']}/{m['rpc']}"
            assert rpc not in table, f"docs/security.md lists {rpc} twice"
            table[rpc] = m["scope"]
    return table


def _code_table() -> dict[str, str]:
    return {rpc: "public" if scope is PUBLIC else str(scope) for rpc, scope in RPC_SCOPES.items()}


def test_doc_table_parser() -> None:
    sample = "\n".join(
        [
            "| RPC | scope |",
            "| --- | --- |",
            "| `MessageService.SendMessage` | `messages:send` | sends |",
            "| `smsgw.v1.AuthService.IssueToken` | `public` |",
            "| `grpc.tls_cert_file` | `--tls-cert FILE` |",  # a settings table: not an RPC row
        ]
    )
    assert doc_scope_table(sample) == {
        "/smsgw.v1.MessageService/SendMessage": "messages:send",
        "/smsgw.v1.AuthService/IssueToken": "public",
    }


def test_docs_list_the_same_scopes() -> None:
    doc = ROOT / "docs" / "security.md"
    table = doc_scope_table(doc.read_text()) if doc.exists() else {}
    if not table:
        pytest.skip("docs/security.md has no RPC -> scope table yet")
    assert table == _code_table()
