"""TLS over real handshakes (RELIABILITY 25): the real `smsgw serve` with certificates made by
`cryptography` in the test. Calls are proven with the gRPC health service (it needs no token);
the phone side is proven by the HTTP answer after the WSS handshake (401 without credentials).
Only processes started here are signalled, by their pid."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import trio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from smsgw_client import tls_credentials
from websockets.exceptions import InvalidMessage, InvalidStatus
from websockets.sync.client import connect as ws_connect

from device_bridge.protocol import SUBPROTOCOLS
from tests.helpers.certs import Pki, make_pki
from tests.helpers.server import SMSGW, ServerProcess

_START_TIMEOUT = 30.0
_CALL_TIMEOUT = 5.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[ServerProcess]:
    """TLS for gRPC and the bridge, configured through SMSGW_* variables (no mTLS)."""
    env = {
        "SMSGW_GRPC__TLS_CERT_FILE": str(pki.server_cert),
        "SMSGW_GRPC__TLS_KEY_FILE": str(pki.server_key),
        "SMSGW_BRIDGE__TLS_CERT_FILE": str(pki.server_cert),
        "SMSGW_BRIDGE__TLS_KEY_FILE": str(pki.server_key),
    }
    proc = ServerProcess(tmp_path_factory.mktemp("tls") / "data", env=env)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def _health(target: str, credentials: grpc.ChannelCredentials | None) -> int:
    """One health check; returns the serving status or raises grpc.RpcError."""
    channel = (
        grpc.insecure_channel(target) if credentials is None else grpc.secure_channel(target, credentials)
    )
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=_CALL_TIMEOUT)
        return int(response.status)


def _health_fails(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        _health(target, credentials)
    return caught.value.code()  # type: ignore[no-any-return]


def _host_port(url: str) -> tuple[str, int]:
    host, _, port = url.partition("://")[2].partition("/")[0].rpartition(":")
    return host, int(port)


# --- gRPC ------------------------------------------------------------------------------


def test_endpoints_announce_tls(tls_server: ServerProcess) -> None:
    assert tls_server.endpoints["device"].startswith("wss://")
    assert tls_server.endpoints["grpc_tls"] is True
    assert "wss://" in tls_server.log_text()


def test_grpc_health_over_tls_with_the_ca(tls_server: ServerProcess, pki: Pki) -> None:
    assert _health(tls_server.grpc_target, tls_credentials(pki.ca_cert)) == health_pb2.HealthCheckResponse.SERVING


def test_plaintext_grpc_to_a_tls_port_fails(tls_server: ServerProcess) -> None:
    assert _health_fails(tls_server.grpc_target, None) == grpc.StatusCode.UNAVAILABLE


def test_grpc_client_not_trusting_the_ca_fails(tls_server: ServerProcess, pki: Pki) -> None:
    assert _health_fails(tls_server.grpc_target, tls_credentials(pki.other_ca_cert)) == grpc.StatusCode.UNAVAILABLE


# --- the phones' WebSocket ---------------------------------------------------------------


def test_wss_handshake_with_the_ca(tls_server: ServerProcess, pki: Pki) -> None:
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    with pytest.raises(InvalidStatus) as caught:  # TLS and HTTP worked; no credentials -> 401
        with ws_connect(tls_server.device_url, ssl=context, subprotocols=list(SUBPROTOCOLS), open_timeout=_CALL_TIMEOUT):
            pass
    assert caught.value.response.status_code == 401


def test_wss_client_not_trusting_the_ca_fails(tls_server: ServerProcess, pki: Pki) -> None:
    context = ssl.create_default_context(cafile=str(pki.other_ca_cert))
    with pytest.raises(ssl.SSLCertVerificationError):
        with ws_connect(tls_server.device_url, ssl=context, subprotocols=list(SUBPROTOCOLS), open_timeout=_CALL_TIMEOUT):
            pass


def test_plain_ws_to_the_wss_port_fails(tls_server: ServerProcess) -> None:
    plain_url = "ws://" + tls_server.device_url.removeprefix("wss://")
    with pytest.raises((InvalidMessage, OSError, EOFError)):  # no HTTP answer at all
        with ws_connect(plain_url, subprotocols=list(SUBPROTOCOLS), open_timeout=_CALL_TIMEOUT):
            pass


def test_reference_phone_connects_over_wss(tls_server: ServerProcess, pki: Pki) -> None:
    """PhoneAgent with a CA file: the TLS handshake and the upgrade request work (a made-up
    pairing code is refused with 401, which stops the phone for good)."""
    from smsgw_agent.agent import PhoneAgent
    from smsgw_agent.modem import ModemOptions, SimulatedModem

    agent = PhoneAgent(
        tls_server.device_url,
        pairing_code="NOTACODE",
        modem=SimulatedModem(ModemOptions()),
        ssl_context=ssl.create_default_context(cafile=str(pki.ca_cert)),
        open_timeout=_CALL_TIMEOUT,
    )

    async def run() -> None:
        with trio.fail_after(15):
            await agent.run()

    trio.run(run)
    assert agent.closed_reason == "http_401"


def _handshake(host: str, port: int, version: ssl.TLSVersion) -> None:
    """A bare TLS handshake offering only `version` (no certificate checks: only the version matters)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2", "http/1.1"])
    with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = version
        context.maximum_version = version
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with socket.create_connection((host, port), timeout=_CALL_TIMEOUT) as raw:
        with context.wrap_socket(raw, server_hostname=host):
            pass


@pytest.mark.parametrize("which", ["grpc", "device"])
def test_tls_1_1_is_refused(tls_server: ServerProcess, which: str) -> None:
    """TLS 1.2 minimum: the same bare client gets in with TLS 1.2 and is refused with TLS 1.1."""
    host, port = _host_port("x://" + tls_server.grpc_target) if which == "grpc" else _host_port(tls_server.device_url)
    _handshake(host, port, ssl.TLSVersion.TLSv1_2)
    with pytest.raises(ssl.SSLError) as caught:
        _handshake(host, port, ssl.TLSVersion.TLSv1_1)
    if caught.value.reason == "NO_PROTOCOLS_AVAILABLE":
        pytest.skip("this OpenSSL refuses to offer TLS 1.1 itself")
    # The bridge (OpenSSL) answers with a protocol-version alert; gRPC (BoringSSL) hangs up.
    assert caught.value.reason in {"TLSV1_ALERT_PROTOCOL_VERSION", "UNEXPECTED_EOF_WHILE_READING"}, caught.value


# --- mutual TLS and the command-line flags (own processes) -----------------------------------


class _Serve:
    """`smsgw serve ARGS` in a subprocess; only this process is ever signalled, by its pid."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.data_dir = tmp_path / "data"
        self.log = tmp_path / "serve.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [SMSGW, "serve", "--data-dir", str(self.data_dir), "--metrics-listen", "127.0.0.1:0", *args],
                stdout=out, stderr=subprocess.STDOUT, env=_env(),
            )

    def endpoints(self) -> dict[str, object]:
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"smsgw serve exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                return json.loads((self.data_dir / "endpoints.json").read_text())  # type: ignore[no-any-return]
            except (OSError, ValueError):
                time.sleep(0.05)
        raise AssertionError(f"smsgw serve did not start in {_START_TIMEOUT} s:\n{self.log.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode


def _env() -> dict[str, str]:
    """The test's environment without SMSGW_* settings a developer's shell might carry."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SMSGW_") or k == "SMSGW_VENV"}


def _run_serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`smsgw serve` that is expected to refuse to start (it exits on its own)."""
    return subprocess.run(
        [SMSGW, "serve", "--data-dir", str(tmp_path / "data"), "--metrics-listen", "127.0.0.1:0", *args],
        capture_output=True, text=True, timeout=_START_TIMEOUT, env=_env(),
    )


def test_mtls_with_flags(tmp_path: Path, pki: Pki) -> None:
    server = _Serve(
        tmp_path, "--grpc-listen", "127.0.0.1:0", "--device-listen", "127.0.0.1:0",
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key), "--tls-client-ca", str(pki.ca_cert),
    )
    try:
        endpoints = server.endpoints()
        target = str(endpoints["grpc"])
        assert endpoints["grpc_tls"] is True
        assert str(endpoints["device"]).startswith("wss://")  # --tls-cert/--tls-key serve the bridge too
        # No client certificate, or one from a CA the server does not trust: refused.
        assert _health_fails(target, tls_credentials(pki.ca_cert)) == grpc.StatusCode.UNAVAILABLE
        untrusted = tls_credentials(pki.ca_cert, pki.other_client_cert, pki.other_client_key)
        assert _health_fails(target, untrusted) == grpc.StatusCode.UNAVAILABLE
        # A certificate from the client CA gets through.
        trusted = tls_credentials(pki.ca_cert, pki.client_cert, pki.client_key)
        assert _health(target, trusted) == health_pb2.HealthCheckResponse.SERVING
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("flag", ["--grpc-listen", "--device-listen"])
def test_plaintext_on_all_interfaces_needs_insecure(tmp_path: Path, flag: str) -> None:
    other = "--device-listen" if flag == "--grpc-listen" else "--grpc-listen"
    done = _run_serve(tmp_path, flag, "0.0.0.0:0", other, "127.0.0.1:0")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--insecure" in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("smsgw serve: ")
    assert not (tmp_path / "data").exists()  # refused before anything was created or listened


def test_insecure_flag_allows_plaintext_on_all_interfaces(tmp_path: Path) -> None:
    server = _Serve(tmp_path, "--grpc-listen", "0.0.0.0:0", "--device-listen", "127.0.0.1:0", "--insecure")
    try:
        endpoints = server.endpoints()
        assert endpoints["grpc_tls"] is False
        port = str(endpoints["grpc"]).rpartition(":")[2]
        assert _health(f"127.0.0.1:{port}", None) == health_pb2.HealthCheckResponse.SERVING
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--tls-cert", "{cert}"), "tls_key_file"),
        (("--tls-cert", "{cert}", "--tls-key", "{missing}"), "tls_key_file: cannot read"),
        (("--tls-cert", "{cert}", "--tls-key", "{wrong_key}"), "not a matching PEM certificate and key"),
        (("--tls-client-ca", "{ca}"), "tls_client_ca_file needs"),
    ],
)
def test_bad_tls_configuration_is_one_line(tmp_path: Path, pki: Pki, args: tuple[str, ...], named: str) -> None:
    values = {"cert": pki.server_cert, "missing": tmp_path / "missing.key", "wrong_key": pki.client_key, "ca": pki.ca_cert}
    done = _run_serve(tmp_path, "--grpc-listen", "127.0.0.1:0", "--device-listen", "127.0.0.1:0",
                      *(a.format(**values) for a in args))
    assert done.returncode == 2, done.stdout + done.stderr
    assert named in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "PRIVATE KEY" not in done.stderr


# --- the client commands ------------------------------------------------------------------


def _client(*args: str) -> subprocess.CompletedProcess[str]:
    # A made-up token: what matters is whether the call reaches the server (UNAUTHENTICATED)
    # or not (UNAVAILABLE); it never authenticates.
    env = {**_env(), "SMSGW_TOKEN": "not-a-token"}
    return subprocess.run([SMSGW, *args], capture_output=True, text=True, timeout=_START_TIMEOUT, env=env)


def test_client_commands_use_tls_when_given_a_ca(tls_server: ServerProcess, pki: Pki) -> None:
    target = tls_server.grpc_target
    over_tls = _client("devices", "list", "--server", target, "--ca-file", str(pki.ca_cert))
    assert over_tls.returncode == 2
    assert "UNAUTHENTICATED" in over_tls.stderr, over_tls.stderr  # TLS worked; the token did not
    plaintext = _client("devices", "list", "--server", target)
    assert "UNAVAILABLE" in plaintext.stderr, plaintext.stderr


def test_client_commands_report_unreadable_tls_files(tmp_path: Path) -> None:
    done = _client("devices", "list", "--server", "127.0.0.1:1", "--ca-file", str(tmp_path / "missing.pem"))
    assert done.returncode == 2
    assert "cannot read CA file" in done.stderr and "Traceback" not in done.stderr
    done = _client("devices", "list", "--server", "127.0.0.1:1", "--client-cert", str(tmp_path / "c.pem"))
    assert done.returncode == 2
    assert "--client-cert and --client-key go together" in done.stderr
