"""`smsgw users ...`: the operator's account commands. They open the database directly (like
`smsgw serve`, from --data-dir / --config), so they work with the server stopped or running;
a running server sees a new password or a disabled account within a few seconds (its token
deny lists are re-read by the jobs loop)."""

from __future__ import annotations

import argparse
import getpass
import secrets
import sys

from gateway.auth.passwords import hash_password
from gateway.auth.repository import AuditEntry, AuthRepository
from gateway.auth.scopes import ALL_SCOPES, parse_scopes
from gateway.auth.service import check_new_credentials
from gateway.config import describe_error, load_settings
from gateway.errors import SmsgwError
from gateway.storage.engine import Database
from gateway.types import utcnow

__all__ = ["run", "read_password"]

EXIT_OK, EXIT_USAGE = 0, 2


def read_password(args: argparse.Namespace, *, confirm: bool) -> str | None:
    """From --password-stdin (one line), else a prompt on a terminal; None = make one up."""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if confirm and getpass.getpass("again: ") != first:
            raise ValueError("the passwords differ")
        return first
    return None


def run(args: argparse.Namespace) -> int:
    overrides: dict[str, object] = {"data_dir": str(args.data_dir)} if args.data_dir else {}
    try:
        settings = load_settings(args.config, **overrides)
        db = Database(settings.database_url, sqlite_synchronous=settings.database.sqlite_synchronous)
        db.migrate()
    except (OSError, ValueError) as exc:
        print(f"smsgw users: {describe_error(exc)}", file=sys.stderr)
        return EXIT_USAGE
    repo = AuthRepository(db)
    try:
        return _run(repo, args)
    except (SmsgwError, ValueError) as exc:
        print(f"smsgw users: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        db.close()


def _run(repo: AuthRepository, args: argparse.Namespace) -> int:
    cmd = args.users_command
    if cmd == "list":
        print(f"{'USERNAME':24}  {'ID':26}  {'STATE':8}  SCOPES")
        for a in repo.list_accounts():
            state = "disabled" if a.disabled else "active"
            print(f"{a.username:24}  {a.id:26}  {state:8}  {' '.join(sorted(a.scopes))}")
        return EXIT_OK
    if cmd == "audit":
        owners = {a.id: a.username for a in repo.list_accounts()}
        for e in repo.list_audit(None, action=args.action, limit=max(1, args.limit), before_id=None):
            owner = owners.get(e.owner_id or "", "-")
            print(f"{e.time:%Y-%m-%d %H:%M:%S}  {owner[:16]:16}  {e.action:14}  {e.actor[:26]:26}  {e.source:15}  {e.detail}")
        return EXIT_OK
    if cmd in ("add", "passwd"):
        password = read_password(args, confirm=True)
        generated = password is None
        if password is None:
            password = secrets.token_urlsafe(18)
        check_new_credentials(args.username, password)
        hashed = hash_password(password)
        if cmd == "add":
            scopes = parse_scopes(args.scope) if args.scope else ALL_SCOPES
            repo.create_account(args.username, hashed, scopes, utcnow(), AuditEntry("account.create", source="cli"))
            print(f"created account {args.username}")
        else:
            repo.update_account(args.username, utcnow(), password_hash=hashed)
            print(f"new password for {args.username}; its tokens are revoked")
        if generated:
            print(f"password: {password}")
        return EXIT_OK
    if cmd == "scopes":
        repo.update_account(args.username, utcnow(), scopes=parse_scopes(args.scope))
        print(f"{args.username} may now hold: {' '.join(sorted(parse_scopes(args.scope)))}")
        return EXIT_OK
    disabled = cmd == "disable"
    repo.update_account(args.username, utcnow(), disabled=disabled)
    print(f"{args.username} {'disabled; its tokens are revoked' if disabled else 'enabled'}")
    return EXIT_OK
