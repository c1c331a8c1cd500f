"""`smsgw inbound list | watch`: the SMS the owner's phones received (InboundService).

Sender and body are printed as they are: they are the caller's own data, asked for by name.
They are never logged.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC
from typing import Any

from smsgw.v1 import inbound_pb2
from smsgw_client import Client
from smsgw_client.envelope import EnvelopeError, KeyRing

from gateway.cli import passphrase_arg
from gateway.cli_messages import parse_time

__all__ = ["add_parser", "run", "inbound_json"]

EXIT_OK = 0


def add_parser(sub: argparse._SubParsersAction, client_args: Callable[[argparse.ArgumentParser], None]) -> None:  # type: ignore[type-arg]
    inbound = sub.add_parser("inbound", help="SMS your phones received: list them, or stream them as they arrive")
    isub = inbound.add_subparsers(dest="inbound_command", required=True)
    ls = isub.add_parser("list", help="received SMS, newest first")
    ls.add_argument("--device", default="", help="only this phone's")
    ls.add_argument("--since", type=parse_time, metavar="TIME", help="received at or after TIME (ISO 8601)")
    ls.add_argument("--until", type=parse_time, metavar="TIME", help="received before TIME (ISO 8601)")
    ls.add_argument("--limit", type=int, default=50, help="SMS per page (max 500)")
    ls.add_argument("--page-token", default="", help="continue where the previous page said")
    watch = isub.add_parser("watch", help="stream received SMS as JSON lines, as they are stored")
    watch.add_argument("--after", type=int, help="resume after this event id (0 = from the start)")
    watch.add_argument("--device", default="", help="only this phone's")
    for parser in isub.choices.values():
        client_args(parser)
        passphrase_arg(parser, "open encrypted SMS")


def run(client: Client, args: argparse.Namespace, passphrases: tuple[str, ...] = ()) -> int:
    ring = KeyRing(passphrases) if passphrases else None
    if args.inbound_command == "list":
        page = client.list_inbound(
            device_id=args.device,
            received_after=args.since,
            received_before=args.until,
            page_size=args.limit,
            page_token=args.page_token,
        )
        if not page.messages and not args.page_token:
            print("no inbound SMS yet")
        for m in page.messages:
            print(_line(_opened(m, ring)))
        if page.next_page_token:
            print(f"more: smsgw inbound list --page-token {page.next_page_token}", file=sys.stderr)
        return EXIT_OK
    for event in client.watch_inbound(args.after, args.device):
        message = _opened(event.message, ring)
        print(json.dumps({"event_id": event.event_id, **inbound_json(message)}, ensure_ascii=False), flush=True)
    return EXIT_OK


def _opened(m: inbound_pb2.InboundMessage, ring: KeyRing | None) -> inbound_pb2.InboundMessage:
    """An encrypted SMS opened with the key ring (a copy, is_encrypted cleared); as it was when
    there is no ring, or when no passphrase opens it (standard error says so)."""
    if ring is None or not m.is_encrypted:
        return m
    opened = inbound_pb2.InboundMessage()
    opened.CopyFrom(m)
    try:
        if m.HasField("data_message"):
            opened.data_message.data = ring.decrypt_bytes(m.data_message.data)
        else:
            opened.text_message.text = ring.decrypt(m.text_message.text)
    except EnvelopeError as exc:
        print(f"smsgw: {m.id}: cannot decrypt ({exc.reason})", file=sys.stderr)
        return m
    opened.is_encrypted = False
    return opened


def inbound_json(m: inbound_pb2.InboundMessage) -> dict[str, Any]:
    """One SMS as a flat JSON object (data as hex, like `smsgw send --data-hex`)."""
    doc: dict[str, Any] = {"id": m.id, "device_id": m.device_id, "sim": m.sim_number, "sender": m.sender}
    if m.HasField("data_message"):
        doc |= {"data_hex": m.data_message.data.hex(), "port": m.data_message.port}
    else:
        doc["text"] = m.text_message.text
    doc |= {"is_encrypted": m.is_encrypted, "received_at": m.received_at.ToJsonString()}
    return (doc | {"truncated": True}) if m.truncated else doc


def _line(m: inbound_pb2.InboundMessage) -> str:
    when = m.received_at.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S")
    if m.HasField("data_message"):
        body = f"data port {m.data_message.port}: {m.data_message.data.hex()}"
    else:
        body = m.text_message.text.replace("\n", " ")
    flag = (" [encrypted]" if m.is_encrypted else "") + (" [truncated]" if m.truncated else "")
    return f"{when}  {m.id}  {m.device_id}  sim {m.sim_number or '-'}  {m.sender}{flag}  {body}"
