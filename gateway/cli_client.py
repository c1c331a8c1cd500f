"""The client side of the `smsgw` command: login, send, watch, devices, audit, simulate (over gRPC)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import grpc
from smsgw.v1 import common_pb2
from smsgw_client import Client, DeadlineExceeded, SmsgwError, Unauthenticated, tls_credentials

from gateway import cli_inbound, cli_messages, cli_otp, cli_webhooks
from gateway.cli_credentials import StoredCredentials, credentials_path
from gateway.private_files import ensure_private_dir
from gateway.cli_users import read_password
from gateway.redact import redact_number
from gateway.types import State, is_settled

__all__ = ["run"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _token(args: argparse.Namespace) -> str:
    """--token-file, else SMSGW_TOKEN, else the credentials of `smsgw login` (refreshed when
    the access token is about to expire)."""
    if args.token_file is not None:
        try:
            return args.token_file.read_text().strip()
        except OSError as exc:
            raise SystemExit(_usage(f"cannot read token file {args.token_file}: {exc.strerror}")) from None
    if os.environ.get("SMSGW_TOKEN"):
        return os.environ["SMSGW_TOKEN"].strip()
    path = credentials_path(args.credentials)
    try:
        stored = StoredCredentials.load(path)
    except (OSError, ValueError, TypeError):
        raise SystemExit(
            _usage(f"not signed in ({path} missing or unreadable): run `smsgw login`, or pass --token-file / SMSGW_TOKEN")
        ) from None
    if stored.access_expiring():
        with Client(args.server, credentials=_channel_credentials(args)) as client:
            try:
                pair = client.refresh_token(stored.refresh_token)
            except SmsgwError as exc:
                raise SystemExit(_usage(f"sign-in expired ({exc.details}): run `smsgw login` again")) from None
        stored = StoredCredentials.from_pair(stored.server, stored.username, pair)
        stored.save(path)
    return stored.access_token


def _login(args: argparse.Namespace) -> int:
    if args.password_file is not None:
        try:
            password = args.password_file.read_text().strip()
        except OSError as exc:
            return _usage(f"cannot read {args.password_file}: {exc.strerror}")
    else:
        password = read_password(args, confirm=False) or ""
    path = credentials_path(args.credentials)
    with Client(args.server, credentials=_channel_credentials(args)) as client:
        pair = client.issue_token(
            args.user, password, scopes=args.scope, access_ttl=args.access_ttl, refresh_ttl=args.refresh_ttl
        )
    StoredCredentials.from_pair(args.server, args.user, pair).save(path)
    # With --print stdout carries the token alone, for SMSGW_TOKEN=$(smsgw login --print ...).
    human = sys.stderr if args.print else sys.stdout
    print(f"signed in as {args.user}; scopes {' '.join(pair.scopes)}", file=human)
    print(f"tokens in {path} (access until {pair.access_expires_at.ToJsonString()}, refreshed when needed)", file=human)
    if args.print:
        print(pair.access_token)
    return EXIT_OK


def _logout(args: argparse.Namespace) -> int:
    """Revoke the stored sign-in on the server, then delete the credentials file whatever the
    server said: a user who logs out wants no usable tokens left on disk. Exit 0 when the server
    revoked the sign-in (or it was already void), 1 when it could not (tokens may stay valid
    until they expire); the reason goes to stderr."""
    path = credentials_path(args.credentials)
    try:
        stored = StoredCredentials.load(path)
    except (OSError, ValueError, TypeError):
        return _usage(f"not signed in ({path})")
    try:
        with Client(args.server, credentials=_channel_credentials(args)) as client:
            outcome = _revoke_sign_in(client, stored)
    finally:
        path.unlink(missing_ok=True)
    if outcome is None:
        print(f"signed out: {path} deleted; the sign-in's tokens are revoked on the server", file=sys.stderr)
        return EXIT_OK
    print(f"signed out: {path} deleted, but the server did not revoke the sign-in ({outcome}); "
          "its tokens stay valid until they expire", file=sys.stderr)
    return EXIT_FAILED


def _revoke_sign_in(client: Client, stored: StoredCredentials) -> str | None:
    """Revoke the sign-in's token family; None when done (or already void), else why not.

    The access token may be expired or revoked on its own (`smsgw token revoke`); the refresh
    token then still proves the sign-in: it is traded for a fresh pair whose access token
    revokes the family."""
    client.set_token(stored.access_token)
    try:
        client.revoke_token(stored.refresh_jti)
        return None
    except Unauthenticated:
        pass
    except SmsgwError as exc:
        return f"{exc.code.name}: {exc.details}"
    try:
        pair = client.refresh_token(stored.refresh_token)
    except Unauthenticated:
        return None  # the refresh token is spent, revoked or expired: nothing left to revoke
    except SmsgwError as exc:
        return f"{exc.code.name}: {exc.details}"
    client.set_token(pair.access_token)
    try:
        client.revoke_token(pair.refresh_jti)
    except SmsgwError as exc:
        return f"{exc.code.name}: {exc.details}"
    return None


def _usage(message: str) -> int:
    print(f"smsgw: {message}", file=sys.stderr)
    return EXIT_USAGE


DEFAULT_SERVER = "127.0.0.1:50051"


def _resolve_server(args: argparse.Namespace) -> None:
    """No --server / SMSGW_SERVER: the server the stored sign-in belongs to, so a `login` to
    another server is not followed by calls to the default one with its token."""
    if args.server:
        return
    uses_stored = args.command != "login" and args.token_file is None and not os.environ.get("SMSGW_TOKEN")
    if uses_stored:
        try:
            args.server = StoredCredentials.load(credentials_path(args.credentials)).server or DEFAULT_SERVER
            return
        except (OSError, ValueError, TypeError, AttributeError):
            pass
    args.server = DEFAULT_SERVER


def run(args: argparse.Namespace) -> int:
    if args.command == "webhooks" and args.webhooks_command == "listen":
        return cli_webhooks.listen(args)  # a local receiver: no server, no token
    _resolve_server(args)
    if args.command == "simulate":
        return _simulate(args)
    try:
        if args.command == "login":
            return _login(args)
        if args.command == "logout":
            return _logout(args)
        with Client(args.server, _token(args), credentials=_channel_credentials(args)) as client:
            if args.command == "send":
                return _send(client, args)
            if args.command == "watch":
                return _watch(client, args)
            if args.command == "audit":
                return _audit(client, args)
            if args.command in ("show", "cancel", "reschedule"):
                return getattr(cli_messages, args.command)(client, args)
            if args.command == "webhooks":
                return cli_webhooks.run(client, args)
            if args.command == "otp":
                return cli_otp.run(client, args)
            if args.command == "inbound":
                return cli_inbound.run(client, args, passphrases(args))
            if args.command == "token":
                print(f"revoked {client.revoke_token(args.jti)} token(s)")
                return EXIT_OK
            if args.devices_command == "list":
                return _devices_list(client)
            if args.devices_command == "settings":
                return cli_messages.device_settings(client, args)
            if args.devices_command == "delete":
                result = client.delete_device(args.device_id)
                print(f"deleted {args.device_id}: {result.rerouted} unaccepted messages rerouted, {result.failed} failed")
                return EXIT_OK
            return _devices_pair(client, args)
    except SmsgwError as exc:
        violations = getattr(exc, "field_violations", [])
        if violations:
            print(f"smsgw: {exc.code.name}", file=sys.stderr)
            for field, why in violations:
                print(f"  {field}: {why}", file=sys.stderr)
        else:
            print(f"smsgw: {exc.code.name}: {exc.details}", file=sys.stderr)
        return EXIT_USAGE


def passphrases(args: argparse.Namespace) -> tuple[str, ...]:
    """The E2E passphrases named by --passphrase-env, newest first."""
    out = []
    for name in getattr(args, "passphrase_env", []):
        value = os.environ.get(name, "")
        if not value:
            raise SystemExit(_usage(f"--passphrase-env: ${name} is not set"))
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # os.environ keeps undecodable bytes as lone surrogates
            raise SystemExit(_usage(f"--passphrase-env: ${name} is not valid UTF-8")) from None
        out.append(value)
    return tuple(out)


def _send(client: Client, args: argparse.Namespace) -> int:
    passphrases_ = passphrases(args)
    data = None
    if args.data_hex is not None:
        if not args.port:
            return _usage("--data-hex needs --port (1..65535)")
        try:
            data = bytes.fromhex(args.data_hex)
        except ValueError:
            return _usage("--data-hex: not hexadecimal")
    message = client.send_message(
        args.to,
        args.text,
        data=data,
        port=args.port,
        device_id=args.device,
        sim_number=args.sim,
        priority=args.priority,
        ttl=args.ttl,
        with_delivery_report=False if args.no_delivery_report else None,
        idempotency_key=args.idempotency_key,
        schedule_at=args.at,
        passphrase=passphrases_[0] if passphrases_ else None,
    )
    print(f"{message.id} {common_pb2.State.Name(message.state)}", flush=True)
    if args.no_wait:
        return EXIT_OK
    if not is_settled(State(message.state), message.with_delivery_report):
        stream = client.watch_messages(after_event_id=0, message_ids=[message.id], timeout=args.wait_timeout)
        try:
            for event in stream:
                print(
                    f"{message.id} #{event.recipient_index} {redact_number(event.phone_number)} "
                    f"{common_pb2.State.Name(event.state)}" + (f" ({event.error})" if event.error else ""),
                    flush=True,
                )
                if is_settled(State(event.message_state), message.with_delivery_report):
                    break
        except DeadlineExceeded:
            pass  # --wait-timeout ran out; the final read below says where the message is
        finally:
            stream.close()
    final = client.get_message(message.id)
    print(f"{final.id} {common_pb2.State.Name(final.state)}", flush=True)
    if final.state == common_pb2.DELIVERED or (final.state == common_pb2.SENT and not final.with_delivery_report):
        return EXIT_OK
    return EXIT_FAILED


def _watch(client: Client, args: argparse.Namespace) -> int:
    for event in client.watch_messages(after_event_id=args.after, message_ids=args.message):
        print(
            json.dumps(
                {
                    "event_id": event.event_id,
                    "message_id": event.message_id,
                    "recipient": event.recipient_index,
                    "phone_number": redact_number(event.phone_number),
                    "state": common_pb2.State.Name(event.state),
                    "message_state": common_pb2.State.Name(event.message_state),
                    "error": event.error,
                    "time": event.time.ToJsonString(),
                }
            ),
            flush=True,
        )
    return EXIT_OK


def _audit(client: Client, args: argparse.Namespace) -> int:
    for e in client.list_audit_events(action=args.action, page_size=args.limit).events:
        time = e.time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
        print(f"{time}  {e.action:14}  {e.actor[:26]:26}  {e.source:15}  {e.detail}")
    return EXIT_OK


def _devices_list(client: Client) -> int:
    devices = client.list_devices().devices
    if not devices:
        print("no devices yet: run `smsgw devices pair`")
        return EXIT_OK
    print(f"{'ID':26}  {'NAME':16}  {'STATE':7}  {'LAST SEEN':20}  {'PENDING':7}  {'WAKE':7}  SIMS")
    for d in devices:
        seen = d.last_seen.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") if d.HasField("last_seen") else "never"
        if not d.connected_with_token:  # paired; online now on its pairing session, or the Welcome was lost
            seen = "pairing" if d.online else "never with token"
        # "push": an FCM push wakes it once its session is gone; "refused": FCM refused its
        # token; "-": reachable only while connected (docs/push.md).
        wake = "push" if d.wakeable else "refused" if d.push_token_invalid else "-"
        sims = ", ".join(f"{s.slot}:{s.operator_name or '?'}" for s in d.sims) or "-"
        state = "online" if d.online else "offline"
        print(f"{d.id:26}  {d.name[:16]:16}  {state:7}  {seen:20}  {d.pending:7}  {wake:7}  {sims}")
    return EXIT_OK


def _devices_pair(client: Client, args: argparse.Namespace) -> int:
    import qrcode

    code = client.create_pairing_code(device_name=args.name, ttl_seconds=args.ttl)
    url = args.device_url or _phone_url(code.device_url, args)
    qr = qrcode.QRCode(border=1)
    qr.add_data(f"smsgw://pair?url={url}&code={code.code}")
    qr.print_ascii(out=sys.stdout, invert=True)
    print(f"pairing code: {code.code}")
    print(f"phone endpoint: {url}")
    print(f"valid until: {code.expires_at.ToJsonString()} (one use)")
    return EXIT_OK


def _phone_url(served: str, args: argparse.Namespace) -> str:
    """The phone endpoint the server named (bridge.public_url, else its bound address). A
    wildcard listen address (0.0.0.0, ::) is no address for a phone: the host this command
    reached the server at stands in. An older server names none: guess from --server."""
    host = _host(args.server) or "127.0.0.1"
    if not served:
        return f"{'wss' if _uses_tls(args) else 'ws'}://{_bracket(host)}:8765/device/v1"
    parts = urlsplit(served)
    # hostname None: no host, or an unbracketed IPv6 one (ws://:::8765/ from servers before
    # endpoints were bracketed); either way no address a phone can use.
    if parts.hostname in (None, "0.0.0.0", "::", ""):
        number = parts.netloc.rpartition(":")[2]  # parts.port raises on the unbracketed form
        port = f":{number}" if number.isdigit() else ""
        served = urlunsplit(parts._replace(netloc=f"{_bracket(host)}{port}"))
    return served


def _host(target: str) -> str:
    return target.rpartition(":")[0].strip("[]") if ":" in target else target


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _simulate(args: argparse.Namespace) -> int:
    from smsgw_agent.simulator import SimulatorOptions, run_simulator

    if args.devices < 1:
        return _usage("--devices must be at least 1")
    if args.doze is not None and args.doze <= 0:
        return _usage("--doze must be more than 0 seconds")
    device_url = args.device_url or _device_url_from_endpoints(args)
    private_token = ""
    if args.private_token_env:
        private_token = os.environ.get(args.private_token_env, "")
        if not private_token:
            return _usage(f"--private-token-env: ${args.private_token_env} is not set")
    ensure_private_dir(args.state_file.parent)  # it will hold the phones' credentials
    options = SimulatorOptions(
        server=args.server,
        token=_token(args),
        device_url=device_url,
        devices=args.devices,
        state_file=args.state_file,
        encoding=args.encoding,
        window=args.window,
        send_delay=args.send_delay,
        delivery_delay=args.delivery_delay,
        failure_rate=args.failure_rate,
        failure_class=args.failure_class,
        sims=args.sims,
        android_limit=args.android_limit,
        delivery_reports=not args.no_delivery_reports,
        reconnect_scale=args.reconnect_scale,
        duration=args.duration,
        ca_file=args.ca_file,
        grpc_credentials=_channel_credentials(args),
        private_token=private_token,
        passphrases=passphrases(args),
        receive_every=args.receive_every,
        receive_text=args.receive,
        receive_from=args.receive_from,
        doze=args.doze,
    )
    try:
        return run_simulator(options)
    except grpc.RpcError as exc:
        return _usage(f"cannot pair simulated phones: {exc.code().name}")
    except ValueError as exc:  # e.g. a --receive text or sender no Inbound could carry
        return _usage(f"simulate: {exc}")
    except OSError as exc:  # ssl.SSLError included: a CA file that is not PEM
        return _usage(f"--ca-file {args.ca_file}: {exc}")


def _device_url_from_endpoints(args: argparse.Namespace) -> str:
    for candidate in (args.state_file.parent / "endpoints.json", Path("smsgw-data/endpoints.json")):
        try:
            return str(json.loads(candidate.read_text())["device"])
        except (OSError, ValueError, KeyError):
            continue
    host = args.server.rpartition(":")[0] or "127.0.0.1"
    return f"{'wss' if _uses_tls(args) else 'ws'}://{host}:8765/device/v1"


def _channel_credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """TLS when --tls, --ca-file or a client certificate is given (or their SMSGW_* variables).

    None = plaintext, which the server accepts only on loopback (or with --insecure).
    """
    if not _uses_tls(args):
        return None
    try:
        return tls_credentials(args.ca_file, args.client_cert, args.client_key)
    except ValueError:
        raise SystemExit(_usage("--client-cert and --client-key go together")) from None
    except OSError as exc:
        raise SystemExit(_usage(str(exc))) from None


def _uses_tls(args: argparse.Namespace) -> bool:
    return bool(args.tls or args.ca_file or args.client_cert or args.client_key)
