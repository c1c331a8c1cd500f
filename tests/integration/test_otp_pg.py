"""One-time passwords on PostgreSQL with two gateways at once (issue 20): a check locks its
verification's row, so the right code checked by both approves once, and wrong guesses from
both use up exactly `max_attempts`."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta


from gateway.config import OtpSettings
from gateway.otp.machine import CheckResult
from gateway.otp.repository import OtpRepository
from gateway.storage.engine import Database
from gateway.types import utcnow
from tests.helpers.accounts import create_owner
from tests.helpers.postgres import throwaway_database
from tests.unit.otp.test_otp_repository import code_check, new_row



def _race(repos: list[OtpRepository], owner: str, vid: str, codes: list[list[str]]) -> Counter[CheckResult]:
    """Each repository (a gateway) checks its list of codes, all starting together."""
    barrier, results, lock = threading.Barrier(len(repos)), Counter[CheckResult](), threading.Lock()

    def run(repo: OtpRepository, mine: list[str]) -> None:
        barrier.wait()
        for code in mine:
            _, result = repo.check(owner, vid, "", code_check(code), utcnow())
            with lock:
                results[result] += 1

    threads = [threading.Thread(target=run, args=(r, c)) for r, c in zip(repos, codes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_two_gateways_checking_at_once_approve_once_and_count_every_attempt() -> None:
    with throwaway_database() as url:
        first, second = Database(url), Database(url)
        try:
            first.migrate()
            owner = create_owner(first, "alice", utcnow())
            settings = OtpSettings(max_attempts=5)
            repos = [OtpRepository(first, settings), OtpRepository(second, settings)]
            for trial in range(10):
                row = new_row(owner, f"+1555010{trial:04d}", "123456", utcnow() + timedelta(milliseconds=trial))
                repos[0].start(owner, row, utcnow())
                got = _race(repos, owner, row.id, [["123456"], ["123456"]])
                assert got[CheckResult.APPROVED] == 1, got
            row = new_row(owner, "+15550109999", "123456", utcnow())
            repos[0].start(owner, row, utcnow())
            got = _race(repos, owner, row.id, [[f"{i:06d}" for i in range(10)], [f"{i:06d}" for i in range(10, 20)]])
            assert got == {CheckResult.DENIED: 4, CheckResult.MAX_ATTEMPTS: 16}, got
        finally:
            first.close()
            second.close()
