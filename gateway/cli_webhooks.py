"""`smsgw webhooks ...`: register, test and inspect webhooks over gRPC (WebhookService)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC

from google.protobuf.timestamp_pb2 import Timestamp
from smsgw.v1 import webhooks_pb2
from smsgw_client import WEBHOOK_EVENTS, Client

__all__ = ["add_parser", "run"]

EXIT_OK = 0


def add_parser(sub: argparse._SubParsersAction, client_args: Callable[[argparse.ArgumentParser], None]) -> None:  # type: ignore[type-arg]
    hooks = sub.add_parser("webhooks", help="signed HTTP callbacks for SMS and device events")
    wsub = hooks.add_subparsers(dest="webhooks_command", required=True)
    add = wsub.add_parser("add", help="register a URL; prints its signing secret once")
    add.add_argument("url", help="https:// URL the events are POSTed to")
    add.add_argument("--event", action="append", required=True, choices=WEBHOOK_EVENTS, help="an event to receive (repeatable)")
    add.add_argument("--device", default="", help="only this phone's events")
    wsub.add_parser("list", help="webhooks, their state and why one is failing or disabled")
    for name, text in (
        ("delete", "delete a webhook and its pending deliveries"),
        ("test", "send a system:ping now and show the answer"),
        ("enable", "re-enable a disabled or failing webhook"),
        ("rotate-secret", "new signing secret (the old one keeps signing for the configured overlap)"),
    ):
        wsub.add_parser(name, help=text).add_argument("webhook_id")
    deliveries = wsub.add_parser("deliveries", help="a webhook's deliveries and attempts, newest first")
    deliveries.add_argument("webhook_id")
    deliveries.add_argument("--state", choices=["pending", "succeeded", "failed"], help="only these")
    deliveries.add_argument("--limit", type=int, default=20, help="deliveries to show (max 500)")
    wsub.add_parser("replay", help="send a finished delivery again (same webhook-id)").add_argument("delivery_id")
    for parser in wsub.choices.values():
        client_args(parser)
    listen = wsub.add_parser("listen", help="a local receiver: verify each request and print its event (for trying webhooks)")
    listen.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT", help="where to listen (default 127.0.0.1:8080)")
    listen.add_argument("--secret-env", default="SMSGW_WEBHOOK_SECRET", metavar="VAR",
                        help="environment variable holding the whsec_ secret (default SMSGW_WEBHOOK_SECRET)")
    listen.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")


def listen(args: argparse.Namespace) -> int:
    """Answer 204 to each verified request (printing its event as a JSON line, once per
    webhook-id) and 400 to anything else; plain HTTP, so for a private-mode server only."""
    import json
    import os
    import sys
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from smsgw_client import WebhookReceiver, WebhookVerificationError

    from gateway.app import join_hostport, split_hostport

    secret = os.environ.get(args.secret_env, "")
    if not secret:
        print(f"smsgw webhooks listen: set ${args.secret_env} to the webhook's whsec_ secret", file=sys.stderr)
        return 2
    receiver = WebhookReceiver(secret)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *values: object) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(min(int(self.headers.get("content-length") or 0), 1 << 20))
            try:
                event = receiver.receive(body, dict(self.headers.items()))
            except WebhookVerificationError as exc:
                print(f"refused: {exc}", file=sys.stderr, flush=True)
                self.send_response(400)
            else:
                if event is not None:
                    with lock:
                        print(json.dumps(event, ensure_ascii=False), flush=True)
                self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

    try:
        host, port = split_hostport(args.listen)
        server = ThreadingHTTPServer((host, port), Handler)
    except (OSError, ValueError) as exc:
        print(f"smsgw webhooks listen: cannot listen on {args.listen}: {getattr(exc, 'strerror', None) or exc}",
              file=sys.stderr)
        return 2
    print(f"listening on http://{join_hostport(host, server.server_address[1])}/ (Ctrl-C stops)", file=sys.stderr, flush=True)
    if args.duration is not None:
        threading.Timer(args.duration, server.shutdown).start()
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return EXIT_OK


def run(client: Client, args: argparse.Namespace) -> int:
    calls, cmd = client.webhooks, args.webhooks_command
    if cmd == "add":
        created = calls.create(args.url, args.event, device_id=args.device)
        _print_webhook(created.webhook)
        print(f"secret {created.secret}")
        print("  (shown only now: keep it where your receiver reads it; it verifies the webhook-signature header)")
    elif cmd == "list":
        for webhook in calls.list().webhooks:
            _print_webhook(webhook)
    elif cmd == "delete":
        calls.delete(args.webhook_id)
        print(f"deleted {args.webhook_id}")
    elif cmd == "test":
        attempt = calls.test(args.webhook_id)
        outcome = f"HTTP {attempt.status_code}" if attempt.status_code else "no answer"
        print(f"{attempt.delivery_id}: {outcome} in {attempt.latency_ms} ms{_error(attempt.error)}")
        return EXIT_OK if 200 <= attempt.status_code < 300 else 1
    elif cmd == "enable":
        _print_webhook(calls.enable(args.webhook_id))
    elif cmd == "rotate-secret":
        rotated = calls.rotate_secret(args.webhook_id)
        print(f"secret {rotated.secret}")
    elif cmd == "replay":
        delivery = calls.replay(args.delivery_id)
        print(f"{delivery.id}: queued again")
    else:
        state = {"pending": 1, "succeeded": 2, "failed": 3}.get(args.state or "", 0)
        for d in calls.deliveries(args.webhook_id, state=state, page_size=args.limit).deliveries:
            state_name = webhooks_pb2.DeliveryState.Name(d.state).removeprefix("DELIVERY_").lower()
            due = f", next attempt {_time(d.next_attempt_at)}" if d.HasField("next_attempt_at") else ""
            print(f"{d.id}  {d.event:<18} {state_name:<9} {d.attempts} attempt(s){due}{_error(d.last_error)}")
            for a in d.attempt_log:
                answer = f"HTTP {a.status_code}" if a.status_code else "no answer"
                print(f"    #{a.attempt} {_time(a.time)}  {answer:<10} {a.latency_ms} ms{_error(a.error)}")
    return EXIT_OK


def _print_webhook(w: webhooks_pb2.Webhook) -> None:
    state = webhooks_pb2.WebhookState.Name(w.state).lower()
    scope = f" device {w.device_id}" if w.device_id else ""
    print(f"{w.id}  {state:<8} {w.url}  [{' '.join(w.events)}]{scope}  pending {w.pending_deliveries}")
    if w.disabled_reason:
        print(f"    why: {w.disabled_reason}")


def _time(ts: Timestamp) -> str:
    return ts.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _error(text: str) -> str:
    return f"  ({text})" if text else ""
