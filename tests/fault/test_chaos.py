"""RELIABILITY 1 and 29 at reduced scale: the history-checked chaos run (docs/chaos.md).

The real `smsgw serve`, reference phones behind a loopback proxy, client threads sending with
idempotency keys, and a WatchMessages stream opened before the first send; meanwhile the
server is killed with SIGKILL and restarted, stopped with SIGSTOP and continued, the phones'
connections are cut and phones are killed and restarted. The checker then judges the history
alone. `smsgw bench --chaos` is the same run at full scale (1,000 phones, 10,000 messages).
"""

from __future__ import annotations

from pathlib import Path

from gateway.bench.chaos import NEMESES, ChaosOptions, run_chaos
from gateway.bench.chaos_check import CHECKS


def test_chaos_history_keeps_every_promise(tmp_path: Path) -> None:
    options = ChaosOptions.reduced(work_dir=tmp_path / "chaos")
    lines: list[str] = []
    result = run_chaos(options, say=lines.append)
    s = result.summary
    print("\n".join(lines), s, f"{result.elapsed:.1f} s", sep="\n")
    # The run did what it claims: every key sent, every nemesis struck, phones saw work.
    assert s["keys"] == options.messages
    assert {n.kind for n in result.history.nemeses} == set(NEMESES)
    assert s["messages"] > 0 and s["events"] > 0
    assert s["delivers"] >= s["messages"] - s["cancel_calls"]  # only a cancel keeps a message from every phone
    # Every problem names one of the checker's checks (after `not problems` this could not fail).
    assert {p.check for p in result.problems} <= set(CHECKS)
    problems = [str(p) for p in result.problems]
    assert not problems, f"{len(problems)} problems (history kept in {result.history_path}):\n" + "\n".join(problems[:30])
