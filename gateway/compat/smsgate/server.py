"""Serving the SMSGate API (gateway/compat/smsgate/app.py) with uvicorn, as one more task on
the gateway's asyncio loop: it calls the same services as the gRPC API, on the same loop, with
no thread or process between them (docs/design.md, "The SMSGate API")."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

__all__ = ["HttpFront"]

_START_TIMEOUT = 10.0


class HttpFront:
    def __init__(
        self, app: Starlette, host: str, port: int, *, cert: Path | None = None, key: Path | None = None,
        client_ca: Path | None = None,
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))  # OSError here: the caller names the setting
        except OSError:
            self._sock.close()
            raise
        self.port: int = self._sock.getsockname()[1]
        self.tls = cert is not None
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off", proxy_headers=False, server_header=False,
            ssl_certfile=str(cert) if cert else None, ssl_keyfile=str(key) if key else None,
            ssl_ca_certs=str(client_ca) if client_ca and cert else None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if client_ca and cert else ssl.CERT_NONE,
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]))
        deadline = asyncio.get_running_loop().time() + _START_TIMEOUT
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise OSError("the SMSGate API stopped while starting")
            if asyncio.get_running_loop().time() > deadline:
                raise OSError("the SMSGate API did not start")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
        self._sock.close()
