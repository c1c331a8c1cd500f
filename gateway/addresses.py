"""HOST:PORT, read and written the one way every listener and client address uses: the
settings' validation, the servers' listeners, the CLI's flags and the endpoints they print."""

from __future__ import annotations

__all__ = ["split_hostport", "join_hostport"]


def split_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT with a port 0..65535, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def join_hostport(host: str, port: int) -> str:
    """HOST:PORT for a URL or a gRPC target: an IPv6 host in brackets (split_hostport strips
    them), else "::" and port 8765 would read as the host ":::8765" with no port."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
