"""`smsgw otp send | check | show | cancel`: one-time passwords over gRPC (OtpService, docs/otp.md).

No code is ever printed: the server never returns one, and the code a user typed for `check`
is not echoed either (CODE may be `-` to read it from standard input, out of `ps` and shell
history). Numbers are printed masked. Exit 0 done (`check`: APPROVED), 1 when a check did not
approve, 2 on usage, configuration or connection errors, each typed error as one line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC

from google.protobuf.timestamp_pb2 import Timestamp
from smsgw.v1 import otp_pb2
from smsgw_client import Client, InvalidArgument, ResourceExhausted, SmsgwError

from gateway.redact import redact_number

__all__ = ["add_parser", "run", "describe_error"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# The request fields the server names in a violation, as this command's flags.
_FLAGS = {
    "to": "--to", "template": "--template", "code_length": "--length", "ttl_seconds": "--ttl",
    "app_hash": "--app-hash", "locale": "--locale", "device_id": "--device", "sim_number": "--sim",
    "idempotency_key": "--key", "verification_id": "ID", "code": "CODE",
}

# What a check that did not approve means for the caller (what to do next).
_NOT_APPROVED = {
    otp_pb2.CHECK_RESULT_DENIED: "wrong code",
    otp_pb2.CHECK_RESULT_EXPIRED: "the code's time ran out: start a new verification",
    otp_pb2.CHECK_RESULT_MAX_ATTEMPTS: "no attempts left: start a new verification",
    otp_pb2.CHECK_RESULT_CANCELED: "canceled, or already approved (a code works once)",
}


def _integer(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None


def _length(value: str) -> int:
    number = _integer(value)
    if not 4 <= number <= 10:
        raise argparse.ArgumentTypeError("4..10 digits")
    return number


def _seconds(value: str) -> int:
    number = _integer(value)
    if number <= 0:
        raise argparse.ArgumentTypeError("a number of seconds above 0")
    return number


def _slot(value: str) -> int:
    number = _integer(value)
    if not 0 <= number <= 8:
        raise argparse.ArgumentTypeError("a SIM slot 1..8 (0 = the phone's choice)")
    return number


def add_parser(sub: argparse._SubParsersAction, client_args: Callable[[argparse.ArgumentParser], None]) -> None:  # type: ignore[type-arg]
    otp = sub.add_parser("otp", help="one-time passwords: send a code through your phones, check what the user typed")
    osub = otp.add_subparsers(dest="otp_command", required=True)
    send = osub.add_parser("send", help="make a code and send it by SMS (again to a number with a pending one: the same code)")
    send.add_argument("--to", required=True, metavar="E164", help="the number to verify")
    send.add_argument("--template", default="", help="SMS text with {code} (and {ttl_minutes}); default 'Your code is {code}'")
    send.add_argument("--length", type=_length, default=0, metavar="N", help="digits, 4..10 (default 6)")
    send.add_argument("--ttl", type=_seconds, default=0, metavar="SECONDS", help="validity, 60..1800 (default 600)")
    send.add_argument("--app-hash", default="", metavar="HASH",
                      help="an Android app's 11-character SMS Retriever hash (ends the SMS, which must fit one part)")
    send.add_argument("--locale", default="", help="BCP 47 tag kept with the verification")
    send.add_argument("--device", default="", metavar="ID", help="send from this phone")
    send.add_argument("--sim", type=_slot, default=0, metavar="N", help="SIM slot 1..8")
    send.add_argument("--key", default="", metavar="IDEMPOTENCY",
                      help="idempotency key: the same key again answers the same verification, no new SMS")
    check = osub.add_parser("check", help="check a code: exit 0 when APPROVED, 1 otherwise")
    check.add_argument("--to", default="", metavar="E164", help="check against this number's pending verification (instead of ID)")
    check.add_argument("verification_id", nargs="?", default="", metavar="ID")
    check.add_argument("code", metavar="CODE", help="what the user typed (not echoed); - reads it from standard input")
    osub.add_parser("show", help="status, delivery, sends, attempts, next resend time").add_argument("verification_id", metavar="ID")
    osub.add_parser("cancel", help="end a pending verification: its code no longer approves").add_argument(
        "verification_id", metavar="ID")
    for parser in osub.choices.values():
        client_args(parser)


def run(client: Client, args: argparse.Namespace) -> int:
    """One `smsgw otp` command; a typed error becomes one line on stderr and exit 2."""
    command = args.otp_command
    try:
        if command == "send":
            return _send(client, args)
        if command == "check":
            return _check(client, args)
        if command == "show":
            _print(client.otp.get(args.verification_id))
        else:
            _print(client.otp.cancel(args.verification_id))
        return EXIT_OK
    except SmsgwError as exc:
        print(f"smsgw otp {command}: {describe_error(exc)}", file=sys.stderr)
        return EXIT_USAGE


def describe_error(exc: SmsgwError) -> str:
    """One line: the status, what the server said (never a code: the server puts none in an
    error), the fields at fault as this command's flags, and how long a limit asks to wait."""
    if isinstance(exc, InvalidArgument) and exc.field_violations:
        bad = "; ".join(f"{_FLAGS.get(field, field)}: {why}" for field, why in exc.field_violations)
        return f"{exc.code.name}: {bad}"
    line = f"{exc.code.name}: {exc.details}" if exc.details else exc.code.name
    if isinstance(exc, ResourceExhausted) and exc.retry_delay is not None:
        line += f" (retry in {_duration(exc.retry_delay)})"
    return line


def _send(client: Client, args: argparse.Namespace) -> int:
    v = client.otp.start(
        args.to, template=args.template, code_length=args.length, ttl_seconds=args.ttl, app_hash=args.app_hash,
        locale=args.locale, device_id=args.device, sim_number=args.sim, idempotency_key=args.key,
    )
    _print(v)
    return EXIT_OK


def _check(client: Client, args: argparse.Namespace) -> int:
    if bool(args.to) == bool(args.verification_id):
        print("smsgw otp check: give ID CODE, or --to E164 CODE", file=sys.stderr)
        return EXIT_USAGE
    code = sys.stdin.readline().strip() if args.code == "-" else args.code
    if not code:
        print("smsgw otp check: CODE is empty", file=sys.stderr)
        return EXIT_USAGE
    if args.to:
        checked = client.otp.check_number(args.to, code)
    else:
        checked = client.otp.check(args.verification_id, code)
    del code
    result = otp_pb2.CheckResult.Name(checked.result).removeprefix("CHECK_RESULT_")
    v = checked.verification
    if checked.result == otp_pb2.CHECK_RESULT_APPROVED:
        print(f"{v.id} APPROVED")
        return EXIT_OK
    why = _NOT_APPROVED.get(checked.result, "not approved")
    print(f"{v.id} {result}: {why}; {checked.attempts_left} attempt(s) left")
    return EXIT_FAILED


def _print(v: otp_pb2.Verification) -> None:
    """A verification, first line `ID STATUS` (for scripts), then its details."""
    status = otp_pb2.VerificationStatus.Name(v.status).removeprefix("VERIFICATION_STATUS_")
    delivery = otp_pb2.DeliveryStatus.Name(v.delivery_status).removeprefix("DELIVERY_STATUS_")
    print(f"{v.id} {status}")
    print(f"  to            {redact_number(v.to)}  ({v.code_length} digits)")
    print(f"  delivery      {delivery}" + (f"  (message {v.message_id})" if v.message_id else ""))
    print(f"  expires       {_when(v.expires_at)}")
    print(f"  sends         {v.sends}")
    print(f"  attempts      {v.attempts} used, {v.attempts_left} left")
    if v.status == otp_pb2.VERIFICATION_STATUS_PENDING and v.HasField("next_send_at"):
        print(f"  next resend   {_when(v.next_send_at)} or later")


def _when(ts: Timestamp) -> str:
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ts.ByteSize() else "-"


def _duration(seconds: float) -> str:
    """`28 s`, `9 min 48 s`, `1 h 5 min`: rounded up, so waiting that long is enough."""
    whole = max(int(-(-seconds // 1)), 1)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    minutes = -(-whole // 60)
    return f"{minutes // 60} h {minutes % 60} min"
