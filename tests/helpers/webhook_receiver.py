"""A real HTTP webhook receiver on 127.0.0.1 (a thread), scripted per request.

Every request is recorded with its raw body and headers and checked with the reference
`standardwebhooks` library. The script says how to answer each next request: a status
code (with optional Retry-After), "hang" (answer after `hang_for` seconds: a timeout), or
"close" (drop the connection without an answer); once the script runs out it answers
`default`.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import standardwebhooks

__all__ = ["Received", "Receiver", "Answer"]

Answer = int | str | tuple[int, str]  # status, "hang", "close", or (status, retry-after)


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    answered: Answer
    verified: bool
    at: float = field(default_factory=time.monotonic)

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def event(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.body)
        return result


class _Server(ThreadingHTTPServer):
    # The listen backlog: the default 5 resets the connections of a worker delivering many
    # webhooks at once while this process is busy (the failover test's thousands).
    request_queue_size = 256


class Receiver:
    def __init__(self, *, default: Answer = 204, hang_for: float = 5.0) -> None:
        self.default = default
        self.hang_for = hang_for
        self.secret: str | None = None  # set after CreateWebhook; requests are verified with it
        self.received: list[Received] = []
        self._script: list[Answer] = []
        self._lock = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                answer = receiver._next()
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver._record(Received(headers, body, answer, receiver._verify(body, headers)))
                if answer == "close":
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                if answer == "hang":
                    time.sleep(receiver.hang_for)
                    answer = 200
                status, retry_after = answer if isinstance(answer, tuple) else (answer, "")
                assert isinstance(status, int)
                self.send_response(status)
                if retry_after:
                    self.send_header("Retry-After", retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="webhook-receiver", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def script(self, answers: Iterable[Answer]) -> None:
        with self._lock:
            self._script.extend(answers)

    def _next(self) -> Answer:
        with self._lock:
            return self._script.pop(0) if self._script else self.default

    def _verify(self, body: bytes, headers: dict[str, str]) -> bool:
        if self.secret is None:
            return False
        try:
            standardwebhooks.Webhook(self.secret).verify(body, headers)
        except standardwebhooks.WebhookVerificationError:
            return False
        return True

    def _record(self, item: Received) -> None:
        with self._lock:
            self.received.append(item)
            self._lock.notify_all()

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 20.0) -> list[Received]:
        """Block until `predicate(received)` holds; AssertionError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate(self.received):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"receiver: condition not met in {timeout} s; got {len(self.received)} requests")
                self._lock.wait(left)
            return list(self.received)

    def events(self, name: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.event.get("event") == name]
