"""Shared fixtures: a real `smsgw serve` process on ephemeral loopback ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.server import ServerProcess


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path / "data") as proc:
        yield proc


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for a module whose tests tolerate each other's data."""
    with ServerProcess(tmp_path_factory.mktemp("shared") / "data") as proc:
        yield proc
