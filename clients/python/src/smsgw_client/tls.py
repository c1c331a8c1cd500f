"""TLS channel credentials for :class:`~smsgw_client.Client` and :class:`~smsgw_client.AsyncClient`.

Example::

    from smsgw_client import Client, tls_credentials

    client = Client("gw.example.net:50051", token, credentials=tls_credentials(ca_file="ca.pem"))
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import grpc

__all__ = ["tls_credentials"]


def _read(path: str | PathLike[str] | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise OSError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def tls_credentials(
    ca_file: str | PathLike[str] | None = None,
    cert_file: str | PathLike[str] | None = None,
    key_file: str | PathLike[str] | None = None,
) -> grpc.ChannelCredentials:
    """Return TLS channel credentials built from PEM files.

    The files are read now, so a wrong path fails here rather than at the first call
    (gRPC would report it only as UNAVAILABLE).

    Args:
        ca_file: The CA that signed the server's certificate; None trusts the system's
            root certificates.
        cert_file: A client certificate, for servers that require mutual TLS.
        key_file: The private key of ``cert_file``.

    Raises:
        ValueError: Only one of ``cert_file`` and ``key_file`` is given.
        OSError: A file cannot be read (the message names which one).
    """
    if (cert_file is None) != (key_file is None):
        raise ValueError("give both cert_file and key_file for a client certificate, or neither")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca_file, "CA file"),
        private_key=_read(key_file, "client key"),
        certificate_chain=_read(cert_file, "client certificate"),
    )
