"""TLS for the gRPC API and the phones' WebSocket (RELIABILITY 25).

TLS 1.2 or later everywhere; optional mutual TLS for gRPC clients; plaintext only on a
loopback address unless `gateway.insecure` says a TLS proxy in front does the job.
Everything here checks settings before anything listens, so a bad certificate path stops
`smsgw serve` with one line naming the setting instead of a half-started server.
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path

import grpc

from gateway.config import BridgeSettings, GrpcSettings, Settings

__all__ = [
    "bridge_ssl_context",
    "check_plaintext_allowed",
    "check_server_settings",
    "grpc_server_credentials",
    "is_loopback",
    "listen_host",
    "tls_pair",
]


def tls_pair(cert_file: Path | None, key_file: Path | None, *, section: str) -> tuple[Path, Path] | None:
    """Return (cert, key) when both are set, None when neither is.

    Raises:
        ValueError: Only one of the two is set (a half-configured TLS must not fall back to
            plaintext silently).
        OSError: A file cannot be read; the message names the setting.
    """
    if cert_file is None and key_file is None:
        return None
    if cert_file is None or key_file is None:
        missing = "tls_cert_file" if cert_file is None else "tls_key_file"
        given = "tls_key_file" if cert_file is None else "tls_cert_file"
        raise ValueError(f"{section}.{given} is set but {section}.{missing} is not: TLS needs both (or neither)")
    _read(cert_file, f"{section}.tls_cert_file")
    _read(key_file, f"{section}.tls_key_file")
    return cert_file, key_file


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise OSError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None


def _server_context(cert_file: Path, key_file: Path, section: str) -> ssl.SSLContext:
    """A server-side context, TLS 1.2 minimum, with the pair loaded (which checks they match)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        # Never echo file contents: the key is a secret. The reason names the problem.
        raise ValueError(
            f"{section}.tls_cert_file / {section}.tls_key_file: not a matching PEM certificate and key "
            f"({exc.reason or exc})"
        ) from None
    return context


def grpc_server_credentials(settings: GrpcSettings) -> grpc.ServerCredentials | None:
    """Credentials for `add_secure_port`, or None for plaintext.

    With `tls_client_ca_file`, clients must present a certificate chaining to that CA (mTLS).
    gRPC's own TLS stack (BoringSSL) refuses anything below TLS 1.2 by default.

    Raises:
        ValueError / OSError: As `tls_pair`, a pair that does not load, an unreadable or
            invalid client CA, or a client CA without a server certificate.
    """
    pair = tls_pair(settings.tls_cert_file, settings.tls_key_file, section="grpc")
    if pair is None:
        if settings.tls_client_ca_file is not None:
            raise ValueError("grpc.tls_client_ca_file needs grpc.tls_cert_file and grpc.tls_key_file (mTLS is TLS)")
        return None
    cert_file, key_file = pair
    _server_context(cert_file, key_file, "grpc")  # validates before gRPC sees it (its errors are opaque)
    client_ca: bytes | None = None
    if settings.tls_client_ca_file is not None:
        client_ca = _read(settings.tls_client_ca_file, "grpc.tls_client_ca_file")
        try:
            ssl.create_default_context(cadata=client_ca.decode("ascii", errors="replace"))
        except (ssl.SSLError, ValueError) as exc:
            raise ValueError(f"grpc.tls_client_ca_file: not a PEM CA certificate ({exc})") from None
    return grpc.ssl_server_credentials(
        [(key_file.read_bytes(), cert_file.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def bridge_ssl_context(settings: BridgeSettings) -> ssl.SSLContext | None:
    """The server-side context for WSS (TLS 1.2 minimum), or None for ws://.

    Raises:
        ValueError / OSError: As `tls_pair`, or a pair that does not load.
    """
    pair = tls_pair(settings.tls_cert_file, settings.tls_key_file, section="bridge")
    if pair is None:
        return None
    return _server_context(*pair, "bridge")


def listen_host(listen: str) -> str:
    """The host part of HOST:PORT ("[::1]:50051" -> "::1"; ":50051" -> "")."""
    return listen.rpartition(":")[0].strip("[]")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 (also IPv4-mapped) and `localhost`.

    "", 0.0.0.0 and :: mean every interface, and other names may resolve anywhere: not loopback.
    """
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def check_plaintext_allowed(settings: Settings) -> None:
    """Refuse plaintext gRPC or ws:// on a non-loopback address unless `gateway.insecure`.

    Raises:
        ValueError: Naming the listener, the TLS settings and `--insecure`.
    """
    if settings.gateway.insecure:
        return
    listeners = [  # (listen setting, address, certificate, its section, what)
        ("grpc", settings.grpc.listen, settings.grpc.tls_cert_file, "grpc", "gRPC"),
        ("bridge", settings.bridge.listen, settings.bridge.tls_cert_file, "bridge", "the phones' WebSocket"),
    ]
    if settings.compat.smsgate.listen:  # it shares gRPC's certificate
        listeners.append(
            ("compat.smsgate", settings.compat.smsgate.listen, settings.grpc.tls_cert_file, "grpc", "the SMSGate API")
        )
    for section, listen, cert_file, tls, what in listeners:
        if cert_file is None and not is_loopback(listen_host(listen)):
            raise ValueError(
                f"{section}.listen {listen} is not a loopback address and {what} has no TLS certificate: "
                f"give --tls-cert and --tls-key ({tls}.tls_cert_file, {tls}.tls_key_file), or pass "
                "--insecure (gateway.insecure) to serve plaintext anyway, e.g. behind a TLS proxy"
            )


def check_server_settings(settings: Settings) -> None:
    """Every TLS check `smsgw serve` needs, before anything listens (the CLI's pre-flight).

    Raises:
        ValueError / OSError: The first problem, in one line naming the setting.
    """
    check_plaintext_allowed(settings)
    grpc_server_credentials(settings.grpc)
    bridge_ssl_context(settings.bridge)
