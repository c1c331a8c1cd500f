"""The failed-authentication lockout against a real server (issue 14, item 5). A successful
sign-in forgives only its own account's failures from that address: an attacker holding any
account can no longer reset the count between guesses at another account, while a user's own
typos followed by the right password still never lock anyone out."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from smsgw_client import Client, ResourceExhausted, Unauthenticated

from tests.helpers.server import ServerProcess

LIMIT = 5
PASSWORD = "mallory's own password"
ALICE_PASSWORD = "alice's real password"


@pytest.fixture
def lockout_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"SMSGW_LIMITS__AUTH_FAILURES": str(LIMIT), "SMSGW_LIMITS__AUTH_LOCKOUT": "30"}
    with ServerProcess(tmp_path_factory.mktemp("lockout") / "data", env=env) as proc:
        yield proc


def _guess(client: Client, username: str, password: str) -> str:
    """'ok', 'wrong' or 'locked' for one sign-in."""
    try:
        client.issue_token(username, password)
    except Unauthenticated:
        return "wrong"
    except ResourceExhausted as exc:
        assert [s for s, _ in exc.quota_violations] == ["source:127.0.0.1"]
        return "locked"
    return "ok"


def test_sign_ins_to_ones_own_account_do_not_reset_guesses_at_another(lockout_server: ServerProcess) -> None:
    server = lockout_server
    good = server.token  # a service's token, issued before any failure
    with Client(server.grpc_target) as anonymous:
        anonymous.create_account("mallory", PASSWORD)
        anonymous.create_account("alice", ALICE_PASSWORD)

        # A user's own typos, then the right password, twice: more typos than the limit in
        # all, never locked, because each success forgives that account's failures.
        for _ in range(2):
            assert [_guess(anonymous, "alice", "alice's typo") for _ in range(LIMIT - 1)] == ["wrong"] * (LIMIT - 1)
            assert _guess(anonymous, "alice", ALICE_PASSWORD) == "ok"

        # The attack of the issue: LIMIT - 1 wrong guesses at admin, one good sign-in with an
        # account of one's own, and again. The LIMIT-th guess at admin locks the address.
        outcomes = []
        for _ in range(3):  # bounded: 3 rounds of LIMIT - 1 guesses
            outcomes += [_guess(anonymous, "admin", f"guess {len(outcomes)}") for _ in range(LIMIT - 1)]
            outcomes.append(_guess(anonymous, "mallory", PASSWORD))
            if "locked" in outcomes:
                break
        assert outcomes[: LIMIT - 1] == ["wrong"] * (LIMIT - 1)
        assert outcomes[LIMIT - 1] == "ok"  # mallory's own sign-in is not refused yet ...
        assert outcomes[LIMIT] == "wrong"  # ... but the next guess at admin is the LIMIT-th
        assert set(outcomes[LIMIT + 1 :]) == {"locked"}, outcomes

        # The address is locked for every account, the right password included; a valid token
        # is never locked out (documented: guessers behind a shared address).
        assert _guess(anonymous, "admin", server.admin_password) == "locked"
        assert _guess(anonymous, "alice", ALICE_PASSWORD) == "locked"
    with Client(server.grpc_target, good) as service:
        service.list_devices()
