"""The systemd units in deploy/ are valid (`systemd-analyze verify`, when the machine has it)
and start commands the CLI accepts, so they do not drift from `smsgw`."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import _parser

UNITS = sorted((Path(__file__).resolve().parents[2] / "deploy" / "systemd").glob("*.service"))
_INSTALLED = "/opt/smsgw/.venv/bin/smsgw"


def _exec_start(unit: Path) -> list[str]:
    [line] = [line for line in unit.read_text().splitlines() if line.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart="))


def test_there_is_a_unit_per_role_and_for_the_schema() -> None:
    assert [u.name for u in UNITS] == [
        "smsgw-bridge.service", "smsgw-db-upgrade.service", "smsgw-gateway.service", "smsgw-worker.service",
    ]


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_each_unit_starts_a_command_the_cli_accepts(unit: Path) -> None:
    program, *args = _exec_start(unit)
    assert program == _INSTALLED
    parsed = _parser().parse_args(args)
    assert parsed.command in ("gateway", "bridge", "worker", "db")
    assert parsed.config == Path("/etc/smsgw/smsgw.yml")


def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    verify = shutil.which("systemd-analyze")
    if verify is None:
        pytest.skip("systemd-analyze is not installed here")
    smsgw = str(Path(sys.executable).parent / "smsgw")  # the real program, so ExecStart resolves
    copies = []
    for unit in UNITS:
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace(_INSTALLED, smsgw))
        copies.append(str(copy))
    run = subprocess.run([verify, "verify", *copies], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and not run.stderr.strip(), run.stderr
    # And it does catch a broken unit.
    broken = tmp_path / "broken.service"
    broken.write_text("[Service]\nExecStart=relative/path\n")
    assert subprocess.run([verify, "verify", str(broken)], capture_output=True, text=True, timeout=60).returncode != 0
