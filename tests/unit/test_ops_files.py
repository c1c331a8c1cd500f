"""The operator's files (issue 18): the committed dashboard is what the generator makes, the
alert rules pass promtool's check and their unit tests, and docs/operations.md names every
panel, query and alert."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.ops.dashboard import ROWS, expressions

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "smsgw-alerts.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None and not os.environ.get("REQUIRE_PROMETHEUS_TESTS"),
    reason="promtool is not installed (scripts/install-prometheus installs Debian's prometheus package)",
)


def test_the_committed_dashboard_is_what_the_generator_makes() -> None:
    done = subprocess.run(
        [str(ROOT / "scripts" / "gen-dashboard"), "--check"], capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "SMSGW_VENV": str(Path(sys.executable).parent.parent)},
    )
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_the_alert_rules_pass_promtool_and_their_unit_tests() -> None:
    assert PROMTOOL is not None, "promtool is not installed"
    for args in (["check", "rules", str(RULES)], ["test", "rules", str(RULES.with_suffix(".test.yml"))]):
        done = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=RULES.parent)
        assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_unit_test_and_a_runbook_entry() -> None:
    alerts = [r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    tests = RULES.with_suffix(".test.yml").read_text()
    operations = (ROOT / "docs" / "operations.md").read_text()
    for alert in alerts:
        assert f"alertname: {alert}" in tests, alert
        assert re.search(rf"^#+ .*\b{alert}\b", operations, re.M), f"docs/operations.md: no heading for {alert}"


def test_operations_md_lists_every_panel_and_its_query() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text()
    for _, panels in ROWS:
        for panel in panels:
            assert panel.title in operations, panel.title
    for title, expr in expressions():
        assert expr in operations, (title, expr)
