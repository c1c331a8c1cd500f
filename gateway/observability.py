"""The metrics port (issue 18): `/metrics` for Prometheus, `/livez` and `/readyz` for a load
balancer or an orchestrator, and 404 for every other path (prometheus_client's own server
answered the metrics page on any path, so `/healthz` looked healthy on a dead database).

- `/livez`: 200 while the process answers HTTP at all.
- `/readyz`: 200 when every check passes: the storage answers `SELECT 1`, the process's
  listeners are up, and it is not draining (SIGTERM received); else 503 with one line per
  failing check. A load balancer stops sending traffic to a draining process before it stops.
- `/metrics`: the process's own registry (one per process; see `new_registry`).
"""

from __future__ import annotations

import logging
import platform
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry, GCCollector, Info, PlatformCollector, ProcessCollector, disable_created_metrics,
    make_wsgi_app,
)

from gateway.version import installed_version

__all__ = ["Readiness", "new_registry", "serve_metrics", "VERSION"]

log = logging.getLogger(__name__)

VERSION = installed_version()

# Counters expose `_total` only: their `_created` twins double the series for nothing a
# dashboard uses (the ask; the Prometheus client's recommended setting).
disable_created_metrics()


def new_registry() -> CollectorRegistry:
    """A process's registry: its own metrics plus the process, platform and GC collectors, and
    `smsgw_build_info{version, python}`. Each process (serve, gateway, bridge, worker) exposes
    its own; the names say which part measures what (`smsgw_gateway_*` the API, `smsgw_bridge_*`
    the phone sessions, `smsgw_worker_*` / `smsgw_webhook_*` / `smsgw_fcm_*` the jobs, `grpc_*`
    the API's calls), and the scrape config gives each target a `role` label (docs/operations.md):
    a label set by the process itself would clash with it (Prometheus renames it `exported_role`)."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    Info("smsgw_build", "The running smsgw: its version and Python", registry=registry).info(
        {"version": VERSION, "python": platform.python_version()}
    )
    return registry


@dataclass
class Readiness:
    """What `/readyz` checks: named callables that return "" when fine, else why not."""

    checks: dict[str, Callable[[], str]] = field(default_factory=dict)
    draining: bool = False

    def add(self, name: str, check: Callable[[], str]) -> None:
        self.checks[name] = check

    def problems(self) -> list[str]:
        found = ["draining: shutting down"] if self.draining else []
        for name, check in self.checks.items():
            try:
                why = check()
            except Exception as exc:  # a check that breaks is a failed check
                why = type(exc).__name__
            if why:
                found.append(f"{name}: {why}")
        return found


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes every second: no access log
        pass


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scrape never holds up the process's exit


class _ThreadingWSGIServer6(_ThreadingWSGIServer):
    address_family = socket.AF_INET6


def _app(registry: CollectorRegistry, readiness: Readiness) -> Callable[..., Iterable[bytes]]:
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        if path == "/livez":
            return _text(start_response, "200 OK", "ok\n")
        if path == "/readyz":
            problems = readiness.problems()
            if problems:
                return _text(start_response, "503 Service Unavailable", "".join(f"{p}\n" for p in problems))
            return _text(start_response, "200 OK", "ok\n")
        return _text(start_response, "404 Not Found", "not found: /metrics, /livez, /readyz\n")

    return app


def _text(start_response: Callable[..., Any], status: str, body: str) -> list[bytes]:
    data = body.encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))])
    return [data]


class MetricsServer:
    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server, self._thread = server, thread
        self.port: int = server.server_port

    def shutdown(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve_metrics(host: str, port: int, registry: CollectorRegistry, readiness: Readiness) -> MetricsServer:
    """Serve the three paths in a daemon thread; OSError when the port cannot be bound."""
    server_class = _ThreadingWSGIServer6 if ":" in host else _ThreadingWSGIServer
    server = make_server(host, port, _app(registry, readiness), server_class, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, name="smsgw-metrics", daemon=True)
    thread.start()
    return MetricsServer(server, thread)
