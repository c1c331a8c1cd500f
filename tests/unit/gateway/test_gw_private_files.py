"""gateway.private_files under a permissive umask, and `smsgw bench --work-dir` using it
(issue 14, item 7)."""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.private_files import create_private_file, ensure_private_dir, tighten, write_private_file


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 0: anything not given an explicit mode would come out world-writable."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_created_owner_only_whatever_the_umask(tmp_path: Path, open_umask: None) -> None:
    ensure_private_dir(tmp_path / "a" / "data")
    assert _mode(tmp_path / "a" / "data") == 0o700
    assert create_private_file(tmp_path / "a" / "data" / "db") is True
    assert create_private_file(tmp_path / "a" / "data" / "db") is False  # kept, not truncated
    write_private_file(tmp_path / "a" / "data" / "secret", "x\n")
    write_private_file(tmp_path / "a" / "data" / "secret", "y\n")  # replaced
    assert (tmp_path / "a" / "data" / "secret").read_text() == "y\n"
    assert not [p.name for p in (tmp_path / "a" / "data").iterdir() if p.name.startswith(".")]  # no temporary left
    assert {_mode(p) for p in (tmp_path / "a" / "data").iterdir()} == {0o600}


def test_an_existing_directory_is_left_alone(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    ensure_private_dir(tmp_path)  # e.g. the working directory holding credentials.json
    assert _mode(tmp_path) == 0o755


def test_tighten_drops_group_and_other_bits_and_logs_each(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "db").write_text("")
    os.chmod(tmp_path / "db", 0o664)
    (tmp_path / "ok").write_text("")
    os.chmod(tmp_path / "ok", 0o600)
    with caplog.at_level(logging.WARNING):
        tighten([tmp_path / "db", tmp_path / "ok", tmp_path / "missing"], logging.getLogger("t"))
    assert _mode(tmp_path / "db") == 0o600 and _mode(tmp_path / "ok") == 0o600
    assert caplog.messages == [f"made {tmp_path / 'db'} owner-only: mode 0664 -> 0600"]


def test_concurrent_writers_never_collide_nor_leave_half_a_file(tmp_path: Path) -> None:
    # One shared temporary name made writers unlink or rename each other's file mid-write.
    path = tmp_path / "credentials.json"
    texts = [str(i) * 50_000 for i in range(4)]
    errors: list[BaseException] = []
    seen: set[str] = set()

    def write(text: str) -> None:
        try:
            for _ in range(40):
                write_private_file(path, text)
                seen.add(path.read_text())
        except BaseException as exc:  # noqa: BLE001 — reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert seen <= set(texts) and path.read_text() in texts
    assert [p.name for p in tmp_path.iterdir()] == ["credentials.json"]  # no temporary file left
    assert _mode(path) == 0o600


def test_tighten_does_not_follow_a_symlink(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    outside = tmp_path / "outside"
    outside.write_text("")
    os.chmod(outside, 0o644)
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "smsgw.db").symlink_to(outside)
    with caplog.at_level(logging.WARNING):
        tighten([data / "smsgw.db"], logging.getLogger("t"))
    assert _mode(outside) == 0o644 and caplog.messages == []


def test_bench_work_dir_is_owner_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`smsgw bench --work-dir DIR` keeps the servers' data directories there."""
    from gateway.bench import driver

    def stop(*_: object) -> None:
        raise RuntimeError("stop after the work directory exists")

    monkeypatch.setattr(driver, "_raw_limits", stop)
    old = os.umask(0o022)
    try:
        with pytest.raises(RuntimeError, match="stop after"):
            driver.run(driver.Options(idle_phones=0, work_dir=tmp_path / "bench", output=tmp_path / "out.json"))
    finally:
        os.umask(old)
    assert _mode(tmp_path / "bench") == 0o700
