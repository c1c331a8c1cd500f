"""gateway.tls: pair validation, server credentials, the bridge's context, the loopback rule;
plus the client-side helpers (smsgw_client.tls_credentials, the phone's wss:// context)."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import grpc
import pytest

from gateway.config import BridgeSettings, GrpcSettings, Settings, load_settings
from gateway.tls import (
    bridge_ssl_context,
    check_plaintext_allowed,
    check_server_settings,
    grpc_server_credentials,
    is_loopback,
    listen_host,
    tls_pair,
)
from tests.helpers.certs import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("SMSGW_"):
            monkeypatch.delenv(key)


# --- the loopback rule -------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST", "localhost.", "::ffff:127.0.0.1"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["", "0.0.0.0", "::", "[::]", "10.0.0.5", "192.168.1.1", "example.com", "128.0.0.1", "::ffff:10.0.0.1"])
def test_not_loopback_hosts(host: str) -> None:
    assert not is_loopback(host)


@pytest.mark.parametrize(
    ("listen", "host"),
    [("127.0.0.1:50051", "127.0.0.1"), ("[::1]:50051", "::1"), (":50051", ""), ("0.0.0.0:0", "0.0.0.0"), ("[::]:1", "::")],
)
def test_listen_host(listen: str, host: str) -> None:
    assert listen_host(listen) == host


def test_defaults_are_allowed_plaintext() -> None:
    check_plaintext_allowed(Settings())


@pytest.mark.parametrize("section", ["grpc", "bridge"])
@pytest.mark.parametrize("listen", ["0.0.0.0:50051", "[::]:50051", ":50051", "10.1.2.3:50051", "gw.example:50051"])
def test_plaintext_on_a_public_address_is_refused(section: str, listen: str) -> None:
    settings = load_settings(**{section: {"listen": listen}})
    with pytest.raises(ValueError, match="--insecure") as caught:
        check_plaintext_allowed(settings)
    assert f"{section}.listen {listen}" in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("section", ["grpc", "bridge"])
def test_insecure_allows_plaintext_anywhere(section: str) -> None:
    check_plaintext_allowed(load_settings(gateway={"insecure": True}, **{section: {"listen": "0.0.0.0:1"}}))


def test_insecure_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMSGW_GATEWAY__INSECURE", "true")
    check_plaintext_allowed(load_settings(grpc={"listen": "0.0.0.0:1"}))


def test_tls_makes_a_public_address_fine(pki: Pki) -> None:
    tls = {"tls_cert_file": str(pki.server_cert), "tls_key_file": str(pki.server_key)}
    settings = load_settings(grpc={"listen": "0.0.0.0:1", **tls}, bridge={"listen": "[::]:2", **tls})
    check_server_settings(settings)


def test_tls_on_one_listener_does_not_cover_the_other(pki: Pki) -> None:
    tls = {"tls_cert_file": str(pki.server_cert), "tls_key_file": str(pki.server_key)}
    settings = load_settings(grpc={"listen": "0.0.0.0:1", **tls}, bridge={"listen": "0.0.0.0:2"})
    with pytest.raises(ValueError, match=r"bridge\.listen"):
        check_plaintext_allowed(settings)


# --- the pair ----------------------------------------------------------------------


def test_neither_file_is_plaintext() -> None:
    assert tls_pair(None, None, section="grpc") is None
    assert grpc_server_credentials(GrpcSettings()) is None
    assert bridge_ssl_context(BridgeSettings()) is None


def test_cert_without_key_is_refused(pki: Pki) -> None:
    with pytest.raises(ValueError, match=r"grpc\.tls_cert_file is set but grpc\.tls_key_file is not"):
        tls_pair(pki.server_cert, None, section="grpc")
    with pytest.raises(ValueError, match=r"bridge\.tls_key_file is set but bridge\.tls_cert_file is not"):
        bridge_ssl_context(BridgeSettings(tls_key_file=pki.server_key))


def test_unreadable_file_names_the_setting(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(OSError, match=r"grpc\.tls_key_file: cannot read .*nope\.pem"):
        tls_pair(pki.server_cert, missing, section="grpc")
    with pytest.raises(OSError, match=r"bridge\.tls_cert_file"):
        bridge_ssl_context(BridgeSettings(tls_cert_file=missing, tls_key_file=pki.server_key))


def test_mismatched_pair_is_refused_without_echoing_the_key(pki: Pki) -> None:
    with pytest.raises(ValueError, match="not a matching PEM certificate and key") as caught:
        grpc_server_credentials(GrpcSettings(tls_cert_file=pki.server_cert, tls_key_file=pki.client_key))
    assert "PRIVATE KEY" not in str(caught.value)


def test_not_pem_is_refused(pki: Pki, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    with pytest.raises(ValueError, match=r"bridge\.tls_cert_file"):
        bridge_ssl_context(BridgeSettings(tls_cert_file=junk, tls_key_file=pki.server_key))


def test_grpc_credentials(pki: Pki) -> None:
    creds = grpc_server_credentials(GrpcSettings(tls_cert_file=pki.server_cert, tls_key_file=pki.server_key))
    assert isinstance(creds, grpc.ServerCredentials)


def test_grpc_mtls_credentials(pki: Pki) -> None:
    settings = GrpcSettings(
        tls_cert_file=pki.server_cert, tls_key_file=pki.server_key, tls_client_ca_file=pki.ca_cert
    )
    assert isinstance(grpc_server_credentials(settings), grpc.ServerCredentials)


def test_client_ca_needs_a_server_certificate(pki: Pki) -> None:
    with pytest.raises(ValueError, match=r"grpc\.tls_client_ca_file needs grpc\.tls_cert_file"):
        grpc_server_credentials(GrpcSettings(tls_client_ca_file=pki.ca_cert))


def test_bad_client_ca_is_refused(pki: Pki, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    base = {"tls_cert_file": pki.server_cert, "tls_key_file": pki.server_key}
    with pytest.raises(ValueError, match=r"grpc\.tls_client_ca_file: not a PEM CA"):
        grpc_server_credentials(GrpcSettings(tls_client_ca_file=junk, **base))
    with pytest.raises(OSError, match=r"grpc\.tls_client_ca_file: cannot read"):
        grpc_server_credentials(GrpcSettings(tls_client_ca_file=tmp_path / "missing.pem", **base))


def test_bridge_context_is_tls_1_2_or_later(pki: Pki) -> None:
    context = bridge_ssl_context(BridgeSettings(tls_cert_file=pki.server_cert, tls_key_file=pki.server_key))
    assert context is not None
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE  # phones authenticate with tokens, not certificates


# --- the client side ---------------------------------------------------------------


def test_client_tls_credentials(pki: Pki) -> None:
    from smsgw_client import tls_credentials

    assert isinstance(tls_credentials(), grpc.ChannelCredentials)
    assert isinstance(tls_credentials(pki.ca_cert), grpc.ChannelCredentials)
    assert isinstance(tls_credentials(str(pki.ca_cert), pki.client_cert, pki.client_key), grpc.ChannelCredentials)
    with pytest.raises(ValueError, match="both cert_file and key_file"):
        tls_credentials(pki.ca_cert, cert_file=pki.client_cert)
    with pytest.raises(OSError, match="cannot read CA file"):
        tls_credentials(pki.ca_cert.with_name("missing.pem"))


def test_agent_ssl_context_needs_wss() -> None:
    from smsgw_agent.agent import PhoneAgent
    from smsgw_agent.modem import ModemOptions, SimulatedModem

    modem = SimulatedModem(ModemOptions())
    context = ssl.create_default_context()
    with pytest.raises(ValueError, match="wss://"):
        PhoneAgent("ws://127.0.0.1:1/device/v1", token="t", modem=modem, ssl_context=context)
    PhoneAgent("wss://127.0.0.1:1/device/v1", token="t", modem=modem, ssl_context=context)
