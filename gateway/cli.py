"""The `smsgw` command: serve, and the client commands (send, watch, devices, webhooks, simulate).

Exit status: 0 success (send: DELIVERED, or SENT without a delivery report), 1 when a sent
message ends FAILED / EXPIRED / CANCELLED, 2 on usage or connection errors, 130 when
interrupted (Ctrl-C), 141 when the reader of stdout went away (`smsgw watch | head -1`): the
statuses a shell reports for a process ended by SIGINT / SIGPIPE, so pipelines read them alike.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from gateway.version import installed_version

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 130, 141  # 128 + SIGINT, 128 + SIGPIPE


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default=os.environ.get("SMSGW_SERVER") or None,
                   help="gRPC HOST:PORT (env SMSGW_SERVER; default: the server of `smsgw login`'s credentials, else 127.0.0.1:50051)")
    p.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help="file holding an access token (default: env SMSGW_TOKEN, else the credentials of `smsgw login`)",
    )
    p.add_argument(
        "--credentials",
        type=Path,
        default=None,
        help="credentials file of `smsgw login` (default: env SMSGW_CREDENTIALS, else ./smsgw-data/credentials.json)",
    )
    _client_tls_args(p)


def passphrase_arg(p: argparse.ArgumentParser, what: str) -> None:
    """--passphrase-env VAR: end-to-end encryption; the passphrase itself never goes on a command
    line. Repeatable for a key log: the first seals, each opens (newest first)."""
    p.add_argument("--passphrase-env", action="append", default=[], metavar="VAR",
                   help=f"environment variable holding the E2E passphrase (repeatable, newest first): {what}")


def _server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML config file (see config.example.yml)")
    p.add_argument("--data-dir", type=Path, help="the server's data directory (default ./smsgw-data)")


def _client_tls_args(p: argparse.ArgumentParser) -> None:
    """TLS to the server: any of these turns it on (cli_client.channel_credentials)."""
    env = os.environ.get
    p.add_argument("--tls", action="store_true", help="use TLS, trusting the system's root certificates")
    p.add_argument("--ca-file", type=Path, default=env("SMSGW_CA_FILE") or None,
                   help="use TLS, trusting this CA (PEM) (env SMSGW_CA_FILE); simulate: also for wss://")
    p.add_argument("--client-cert", type=Path, default=env("SMSGW_CLIENT_CERT") or None,
                   help="client certificate for mutual TLS (PEM) (env SMSGW_CLIENT_CERT)")
    p.add_argument("--client-key", type=Path, default=env("SMSGW_CLIENT_KEY") or None,
                   help="its private key (PEM) (env SMSGW_CLIENT_KEY)")


def _non_negative(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return number


def _time(value: str) -> datetime:
    from gateway.cli_messages import parse_time

    return parse_time(value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smsgw", description="On-premise SMS gateway over your own phones.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="log lines for people (default), or one JSON object a line (docs/operations.md)")
    parser.add_argument("--version", action="version", version=f"smsgw {installed_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run gateway + device bridge + jobs in one process (SQLite)")
    serve.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    serve.add_argument("--log-format", choices=("text", "json"), default=argparse.SUPPRESS,
                       help="log lines for people (default), or one JSON object a line")
    _server_args(serve)
    serve.add_argument("--grpc-listen", help="HOST:PORT for the gRPC API (default 127.0.0.1:50051; port 0 = any)")
    serve.add_argument("--device-listen", help="HOST:PORT for phone WebSockets (default 127.0.0.1:8765)")
    serve.add_argument("--metrics-listen", help="HOST:PORT for Prometheus /metrics (default 127.0.0.1:9464)")
    serve.add_argument("--tls-cert", type=Path, metavar="FILE", help="PEM certificate (chain) for gRPC and the phones' WSS")
    serve.add_argument("--tls-key", type=Path, metavar="FILE", help="PEM private key of --tls-cert")
    serve.add_argument("--tls-client-ca", type=Path, metavar="FILE", help="mutual TLS: gRPC clients need a certificate from this CA")
    serve.add_argument("--insecure", action="store_true", default=None,
                       help="allow plaintext gRPC / ws:// on a non-loopback address (e.g. behind a TLS proxy)")
    for role, text, listens in (
        ("gateway", "run the gRPC API alone, on PostgreSQL (docs/deploy.md)", ("grpc", "metrics")),
        ("bridge", "run the phones' WebSocket bridge alone, on PostgreSQL (docs/deploy.md)", ("device", "metrics")),
        ("worker", "run webhook deliveries, expiry and purges alone, on PostgreSQL (docs/deploy.md)", ("metrics",)),
    ):
        r = sub.add_parser(role, help=text)
        r.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
        r.add_argument("--log-format", choices=("text", "json"), default=argparse.SUPPRESS,
                       help="log lines for people (default), or one JSON object a line")
        _server_args(r)
        r.set_defaults(grpc_listen=None, device_listen=None, metrics_listen=None, tls_cert=None, tls_key=None, tls_client_ca=None)
        for listen in listens:
            r.add_argument(f"--{listen}-listen", help=f"HOST:PORT ({'phones' if listen == 'device' else listen}; port 0 = any)")
        if role != "worker":
            r.add_argument("--tls-cert", type=Path, metavar="FILE", help="PEM certificate (chain)")
            r.add_argument("--tls-key", type=Path, metavar="FILE", help="PEM private key of --tls-cert")
        if role == "gateway":
            r.add_argument("--tls-client-ca", type=Path, metavar="FILE", help="mutual TLS: gRPC clients need a certificate from this CA")
        r.add_argument("--insecure", action="store_true", default=None,
                       help="allow plaintext on a non-loopback address (e.g. behind a TLS proxy)")
    db = sub.add_parser("db", help="the database schema (for the separate roles; serve migrates by itself)")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    upgrade = dbsub.add_parser("upgrade", help="migrate to this version's schema; first time: the admin account and the JWT secret")
    _server_args(upgrade)

    send = sub.add_parser("send", help="send an SMS and follow it to a final state")
    _client_args(send)
    send.add_argument("--to", action="append", required=True, metavar="E164", help="recipient; repeat for several")
    content = send.add_mutually_exclusive_group(required=True)
    content.add_argument("--text")
    content.add_argument("--data-hex", help="binary SMS payload as hex (needs --port)")
    send.add_argument("--port", type=_non_negative, default=0, help="data SMS port")
    send.add_argument("--device", default="", help="pin to this device id")
    send.add_argument("--sim", type=_non_negative, default=0, help="SIM slot (1-based)")
    send.add_argument("--priority", type=int, default=0)
    send.add_argument("--ttl", type=_non_negative, help="seconds before it expires unsent")
    send.add_argument("--at", type=_time, metavar="TIME", help="hold it until then (ISO 8601, e.g. 2026-12-24T09:00:00Z; at most 30 days ahead)")
    send.add_argument("--no-delivery-report", action="store_true")
    send.add_argument("--idempotency-key", help="retry-safe key (default: a new random one)")
    send.add_argument("--no-wait", action="store_true", help="print the message id and return at once")
    send.add_argument("--wait-timeout", type=float, default=120.0, help="seconds to follow the message (default 120)")
    passphrase_arg(send, "seal the text/data into an smsgw1 envelope before sending (docs/e2e.md)")

    show = sub.add_parser("show", help="one message: state, parts, attempts, next attempt, per recipient")
    _client_args(show)
    show.add_argument("message_id")
    cancel = sub.add_parser("cancel", help="cancel a message no phone has accepted yet")
    _client_args(cancel)
    cancel.add_argument("message_id")
    resched = sub.add_parser("reschedule", help="move a pending message's send time")
    _client_args(resched)
    resched.add_argument("message_id")
    when = resched.add_mutually_exclusive_group(required=True)
    when.add_argument("--at", type=_time, metavar="TIME", help="the new time (ISO 8601)")
    when.add_argument("--now", action="store_true", help="send as soon as pacing allows")

    watch = sub.add_parser("watch", help="stream state changes of your messages")
    _client_args(watch)
    watch.add_argument("--after", type=int, help="resume after this event id (0 = from the start)")
    watch.add_argument("--message", action="append", default=[], help="only this message id; repeatable")

    users = sub.add_parser("users", help="manage accounts (opens the server's database directly)")
    usub = users.add_subparsers(dest="users_command", required=True)
    for name, text in (
        ("add", "create an account (password: --password-stdin, a prompt, or one is made up and printed)"),
        ("passwd", "set a new password (revokes the account's tokens)"),
        ("disable", "refuse the account's sign-ins and revoke its tokens"),
        ("enable", "allow the account to sign in again"),
        ("scopes", "set the scopes the account's tokens may carry"),
    ):
        u = usub.add_parser(name, help=text)
        _server_args(u)
        u.add_argument("username")
        if name in ("add", "passwd"):
            u.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
        if name in ("add", "scopes"):
            u.add_argument("--scope", action="append", default=[], required=name == "scopes",
                           help="a scope (repeatable; default for add: all)")
    _server_args(usub.add_parser("list", help="accounts, their state and scopes"))
    uaudit = usub.add_parser("audit", help="the whole audit log (every account, and failures of unknown users)")
    _server_args(uaudit)
    uaudit.add_argument("--action", default="", help="only this action (e.g. auth.failure)")
    uaudit.add_argument("--limit", type=int, default=50, help="entries to show, newest first")

    login = sub.add_parser("login", help="sign in and keep the tokens in the credentials file")
    _client_args(login)
    login.add_argument("--user", default="admin", help="username (default admin)")
    login.add_argument("--password-file", type=Path, help="read the password from this file (e.g. smsgw-data/admin.password)")
    login.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    login.add_argument("--scope", action="append", default=[], help="a scope to ask for (repeatable; default: all of the account's)")
    login.add_argument("--access-ttl", type=_non_negative, default=0, help="seconds (default 900)")
    login.add_argument("--refresh-ttl", type=_non_negative, default=0, help="seconds (default 2592000)")
    login.add_argument("--print", action="store_true", help="also print the access token (for scripts: SMSGW_TOKEN)")
    logout = sub.add_parser("logout", help="revoke the stored sign-in and delete the credentials file")
    _client_args(logout)

    token = sub.add_parser("token", help="revoke tokens")
    tsub = token.add_subparsers(dest="token_command", required=True)
    revoke = tsub.add_parser("revoke", help="revoke a token by jti (a refresh token's revokes its whole sign-in)")
    _client_args(revoke)
    revoke.add_argument("jti")

    audit = sub.add_parser("audit", help="your audit log: tokens, devices, failed sign-ins (newest first)")
    _client_args(audit)
    audit.add_argument("--action", default="", help="only this action (e.g. token.issue, auth.failure)")
    audit.add_argument("--limit", type=int, default=50, help="entries to show (max 500)")

    devices = sub.add_parser("devices", help="list, pair and delete phones")
    dsub = devices.add_subparsers(dest="devices_command", required=True)
    dlist = dsub.add_parser("list", help="phones with online state, last seen, SIMs")
    _client_args(dlist)
    pair = dsub.add_parser(
        "pair",
        help="make a pairing code (and QR code) for a phone: short-lived; usable for its device"
        " until the device's first session with its token",
    )
    _client_args(pair)
    pair.add_argument("--name", default="", help="device name shown in the list")
    pair.add_argument("--ttl", type=int, default=0, help="seconds the code stays valid (default 600)")
    pair.add_argument("--device-url", help="phone endpoint to put in the QR code (default: the one the server names: bridge.public_url, else the address its bridge listens on)")
    delete = dsub.add_parser("delete", help="revoke a phone's credentials and end its session")
    _client_args(delete)
    delete.add_argument("device_id")
    dset = dsub.add_parser("settings", help="show a phone's send pacing; with options, change it (pushed to the phone at once)")
    _client_args(dset)
    dset.add_argument("device_id")
    dset.add_argument("--sim", type=int, default=0, metavar="SLOT", help="change this SIM's limits (default: every SIM's)")
    for flag, text in (
        ("--parts-per-minute", "SMS parts in any 60 s (0 = no limit)"),
        ("--min-interval-ms", "milliseconds between two sends of a SIM"),
        ("--parts-per-hour", "parts in any hour (0 = no cap)"),
        ("--parts-per-day", "parts in any 24 h (0 = no cap)"),
        ("--recipients-per-month", "distinct numbers per calendar month (0 = no cap)"),
    ):
        dset.add_argument(flag, type=_non_negative, help=text)
    dset.add_argument("--phone-parts-per-minute", type=_non_negative, help="all SIMs together (Android allows 30)")
    dset.add_argument("--priority-bypass", action=argparse.BooleanOptionalAction, default=None,
                      help="priority >= 100 skips the SIM limits")
    dset.add_argument("--reset", action="store_true", help="back to the server's defaults")

    from gateway import cli_webhooks

    cli_webhooks.add_parser(sub, _client_args)

    from gateway import cli_inbound

    cli_inbound.add_parser(sub, _client_args)

    from gateway import cli_otp

    cli_otp.add_parser(sub, _client_args)

    sim = sub.add_parser("simulate", help="run N simulated phones against a running server")
    _client_args(sim)
    sim.add_argument("--devices", type=int, default=1, metavar="N")
    sim.add_argument("--device-url", help="phone endpoint ws://HOST:PORT/device/v1 (default: from endpoints.json)")
    sim.add_argument("--state-file", type=Path, default=Path("smsgw-data/simulator.json"), help="credentials of the simulated phones")
    sim.add_argument("--encoding", choices=["proto", "json"], default="proto")
    sim.add_argument("--window", type=int, default=16)
    sim.add_argument("--sims", type=int, default=1, metavar="N", help="SIMs per phone, reported as slots 1..N (1..8)")
    sim.add_argument("--send-delay", type=float, default=0.05, help="seconds the modem takes to send one SMS part")
    sim.add_argument("--delivery-delay", type=float, default=0.05, help="seconds until a part's delivery report")
    sim.add_argument("--failure-rate", type=float, default=0.0, help="share of sends that fail (0..1)")
    sim.add_argument("--failure-class", default="generic_failure",
                     choices=["generic_failure", "limit_exceeded", "no_service", "radio_off", "invalid_number", "blocked", "decrypt_failed"],
                     help="what the --failure-rate share fails with (default generic_failure)")
    sim.add_argument("--android-limit", type=int, default=30, metavar="PARTS",
                     help="Android's per-app limit: parts per sliding 60 s per phone, else the confirmation dialog (0 = off)")
    sim.add_argument("--no-delivery-reports", action="store_true", help="the carrier never reports delivery")
    sim.add_argument("--reconnect-scale", type=float, default=1.0, help="multiply reconnect backoff delays (tests use small values)")
    sim.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    sim.add_argument("--receive-every", type=float, metavar="SECONDS",
                     help="each phone receives an SMS this often and forwards it to the server (inbound)")
    sim.add_argument("--receive", default="", metavar="TEXT",
                     help="the received SMS' text (default: numbered); without --receive-every, one per phone")
    sim.add_argument("--receive-from", default="+15550199000", metavar="SENDER", help="the received SMS' sender")
    sim.add_argument("--doze", type=float, metavar="SECONDS",
                     help="phones close their session after this long idle and come back only when woken "
                          "by an FCM push (through `smsgw fcm-standin`) or to report something (docs/push.md)")
    sim.add_argument("--private-token-env", metavar="VAR",
                     help="environment variable holding a private-mode server's token, sent when pairing")
    passphrase_arg(sim, "the phones open encrypted messages and seal what they receive (docs/e2e.md)")

    from gateway import cli_standin

    cli_standin.add_parser(sub)

    bench = sub.add_parser("bench", help="measure latency, throughput, idle sessions and a reconnect storm (docs/performance.md)")
    bench.add_argument("--quick", action="store_true", help="small counts, under a minute (the CI smoke run)")
    bench.add_argument("--phones", type=int, help="phones for latency, throughput and bulk (default 1000; quick 100)")
    bench.add_argument("--idle-phones", type=int, help="phones for the idle and storm figures (default 10000; quick 500)")
    bench.add_argument("--rate", type=float, help="offered messages/s in the latency run (default 500; quick 200)")
    bench.add_argument("--duration", type=float, help="seconds of load per latency/throughput run (default 10; quick 2)")
    bench.add_argument("--bulk", type=int, dest="bulk_recipients", help="recipients sent through SendMessages (default 20000)")
    bench.add_argument("--idle-window", type=float, help="seconds the idle CPU is measured over (default 20: one keepalive)")
    bench.add_argument("--postgres", metavar="URL",
                       help="admin URL for a throwaway PostgreSQL database (default postgresql://postgres@127.0.0.1:5432/test; '' skips)")
    bench.add_argument("--topology", choices=("serve", "split"),
                       help="split: also run latency, throughput and bulk on smsgw gateway + bridge + worker on "
                            "PostgreSQL, beside serve (docs/deploy.md)")
    bench.add_argument("--output", type=Path, default=Path("bench-results.json"), help="where the JSON goes")
    bench.add_argument("--work-dir", type=Path, help="keep the servers' data and logs here (default: a temporary directory)")
    bench.add_argument("--chaos", action="store_true",
                       help="the history-checked chaos run instead (docs/chaos.md): 1000 phones, 10000 messages; --quick: the CI size")
    bench.add_argument("--messages", type=int, help="--chaos: messages sent (default 10000)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from gateway import logs

    logs.configure(verbose=args.verbose, fmt=args.log_format)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED  # Ctrl-C is the user's choice: no traceback
    except BrokenPipeError:
        _drop_stdout()
        return EXIT_BROKEN_PIPE


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in ("serve", "gateway", "bridge", "worker"):
        return _serve(args)
    if args.command == "db":
        return _db(args)
    if args.command == "bench":
        return _bench(args)
    if args.command == "fcm-standin":
        from gateway import cli_standin

        return cli_standin.run(args)
    if args.command == "users":
        from gateway import cli_users

        return cli_users.run(args)
    from gateway import cli_client

    return cli_client.run(args)


def _drop_stdout() -> None:
    """Point stdout at /dev/null: the interpreter flushes it at exit, and a flush into the
    closed pipe would print "Exception ignored ... BrokenPipeError" after all."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (embedded use): nothing will be flushed
        pass


def _serve(args: argparse.Namespace) -> int:
    """`smsgw serve`, or one role of it (`gateway`, `bridge`, `worker`: gateway/roles.py)."""
    import trio

    from gateway import app, tls
    from gateway.config import describe_error, load_settings

    command = args.command
    overrides: dict[str, object] = {}
    if args.data_dir is not None:
        overrides["data_dir"] = str(args.data_dir)
    for flag, section in (("grpc_listen", "grpc"), ("device_listen", "bridge"), ("metrics_listen", "metrics")):
        value = getattr(args, flag)
        if value is not None:
            try:
                app.split_hostport(value)
            except ValueError as exc:
                print(f"smsgw {command}: --{flag.replace('_', '-')}: {exc}", file=sys.stderr)
                return EXIT_USAGE
            overrides[section] = {"listen": value}
    _tls_overrides(args, overrides)
    try:
        settings = load_settings(args.config, **overrides)
        tls.check_server_settings(settings)  # one line naming the setting, before anything listens
    except (OSError, ValueError) as exc:
        print(f"smsgw {command}: bad configuration: {describe_error(exc)}", file=sys.stderr)
        return EXIT_USAGE
    if command == "serve":
        run = app.serve
    else:
        from gateway import roles

        run = {"gateway": roles.run_gateway, "bridge": roles.run_bridge, "worker": roles.run_worker}[command]
    try:
        trio.run(lambda: run(settings, announce=lambda line: print(line, flush=True)))
    except* (OSError, ValueError) as group:
        # A port in use, a data directory that cannot be written, a bad key, SQLite or a
        # schema behind for a role: say so, no traceback.
        for exc in _leaves(group):
            print(f"smsgw {command}: {exc}", file=sys.stderr)
        failed = True
    else:
        failed = False
    return EXIT_USAGE if failed else EXIT_OK


def _db(args: argparse.Namespace) -> int:
    """`smsgw db upgrade`."""
    from gateway import roles
    from gateway.config import describe_error, load_settings

    overrides: dict[str, object] = {} if args.data_dir is None else {"data_dir": str(args.data_dir)}
    try:
        settings = load_settings(args.config, **overrides)
    except (OSError, ValueError) as exc:
        print(f"smsgw db upgrade: bad configuration: {describe_error(exc)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        roles.upgrade_database(settings, announce=lambda line: print(line, flush=True))
    except (OSError, ValueError) as exc:
        print(f"smsgw db upgrade: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _bench(args: argparse.Namespace) -> int:
    if args.chaos:
        from gateway.bench.chaos import cli_run

        return cli_run(args.quick, args.phones, args.messages, args.work_dir, args.output)
    from gateway.bench.driver import Options, run, unfinished

    given = {k: v for k, v in vars(args).items() if k in Options.__dataclass_fields__ and v is not None}
    given.pop("quick", None)
    for name in ("phones", "idle_phones", "rate", "duration", "bulk_recipients", "idle_window"):
        if name in given and given[name] <= 0:
            print(f"smsgw bench: --{name.replace('_', '-')} must be positive", file=sys.stderr)
            return EXIT_USAGE
    options = Options.quick_run(**given) if args.quick else Options(**given)
    try:
        results = run(options, say=lambda line: print(line, flush=True))
    except (OSError, RuntimeError) as exc:
        print(f"smsgw bench: {exc}", file=sys.stderr)
        return EXIT_FAILED
    missing = unfinished(results)
    if missing:
        print(f"smsgw bench: did not finish: {', '.join(missing)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _tls_overrides(args: argparse.Namespace, overrides: dict[str, object]) -> None:
    """--tls-cert/--tls-key serve both gRPC and the bridge; --tls-client-ca is gRPC's mTLS."""
    sections: dict[str, dict[str, str]] = {}
    for flag, targets in (
        ("tls_cert", (("grpc", "tls_cert_file"), ("bridge", "tls_cert_file"))),
        ("tls_key", (("grpc", "tls_key_file"), ("bridge", "tls_key_file"))),
        ("tls_client_ca", (("grpc", "tls_client_ca_file"),)),
    ):
        value = getattr(args, flag)
        if value is not None:
            for section, key in targets:
                sections.setdefault(section, {})[key] = str(value)
    for section, values in sections.items():
        existing = overrides.setdefault(section, {})
        assert isinstance(existing, dict)
        existing.update(values)
    if args.insecure:
        overrides["gateway"] = {"insecure": True}


def _leaves(exc: BaseException) -> list[BaseException]:
    """The plain exceptions inside (nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


if __name__ == "__main__":
    sys.exit(main())
