"""Project-wide checks: committed stubs match the .proto files; every module declares __all__."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["gateway", "device_bridge", "smsgw_client", "smsgw_agent"]


def test_generated_stubs_are_fresh() -> None:
    """`scripts/gen-proto --check` regenerates into a temp dir and diffs (fails on drift)."""
    done = subprocess.run(
        [str(ROOT / "scripts" / "gen-proto"), "--check"],
        capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "SMSGW_VENV": str(Path(sys.executable).parent.parent)},
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        names.append(package)
        for info in pkgutil.walk_packages(module.__path__, package + "."):
            names.append(info.name)
    return names


@pytest.mark.parametrize("name", _modules())
def test_module_declares_all(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    if name.endswith("__main__"):
        return
    if exported is None:
        assert not [n for n in vars(module) if not n.startswith("_") and getattr(vars(module)[n], "__module__", None) == name], (
            f"{name} defines public names but no __all__"
        )
        return
    for attr in exported:
        assert hasattr(module, attr), f"{name}.__all__ names missing {attr}"


def test_config_example_matches_the_defaults() -> None:
    """config.example.yml documents every default; it must not drift from the code."""
    from gateway.config import Settings, load_settings

    assert load_settings(ROOT / "config.example.yml") == Settings()
