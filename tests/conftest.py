"""Shared fixtures: a real `smsgw serve` process on ephemeral loopback ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.server import ServerProcess


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "data")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for a module whose tests tolerate each other's data."""
    proc = ServerProcess(tmp_path_factory.mktemp("shared") / "data")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
