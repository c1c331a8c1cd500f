"""One typed, frozen settings tree: defaults in code, an optional YAML file, then
`SMSGW_SECTION__KEY` environment overrides (e.g. `SMSGW_BRIDGE__PING_INTERVAL=5`).

Loaded once by the CLI and passed down; nothing reads it from a global.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Settings",
    "GrpcSettings",
    "BridgeSettings",
    "DatabaseSettings",
    "MetricsSettings",
    "LimitsSettings",
    "JobsSettings",
    "load_settings",
]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GrpcSettings(_Section):
    listen: str = "127.0.0.1:50051"
    # Graceful stop: in-flight RPCs get this long after SIGTERM.
    shutdown_grace: float = 5.0
    max_receive_message_length: int = 4 * 1024 * 1024


class BridgeSettings(_Section):
    listen: str = "127.0.0.1:8765"
    # websockets' names and defaults (RELIABILITY 7): a silent phone is dead <= 40 s after its last frame.
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    close_timeout: float = 10.0
    open_timeout: float = 10.0
    hello_timeout: float = 10.0
    max_size: int = 256 * 1024
    max_window: int = 1000
    shutdown_grace: float = 5.0


class DatabaseSettings(_Section):
    # Empty = sqlite file in the data directory.
    url: str = ""
    # FULL: an acknowledged SendMessage survives power loss (RELIABILITY 6). NORMAL is an opt-in.
    sqlite_synchronous: str = Field(default="FULL", pattern="^(FULL|NORMAL)$")


class MetricsSettings(_Section):
    listen: str = "127.0.0.1:9464"


class LimitsSettings(_Section):
    max_recipients: int = 100
    max_parts: int = 10
    max_data_bytes: int = 140 * 10
    max_ttl_seconds: int = 30 * 24 * 3600
    max_idempotency_key: int = 128


class JobsSettings(_Section):
    expiry_interval: float = 5.0
    pairing_code_ttl: int = 600


class Settings(_Section):
    """The whole tree; build it with `load_settings`."""

    data_dir: Path = Path("smsgw-data")
    grpc: GrpcSettings = GrpcSettings()
    bridge: BridgeSettings = BridgeSettings()
    database: DatabaseSettings = DatabaseSettings()
    metrics: MetricsSettings = MetricsSettings()
    limits: LimitsSettings = LimitsSettings()
    jobs: JobsSettings = JobsSettings()

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.data_dir / 'smsgw.db'}"


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Defaults, then the YAML file, then `SMSGW_SECTION__KEY` variables, then `overrides` (CLI flags)."""
    tree: dict[str, Any] = {}
    if config_file is not None:
        try:
            loaded = yaml.safe_load(config_file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{config_file}: not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{config_file}: expected a mapping at the top level")
        tree = loaded
    tree = _merge(_merge(tree, _env_tree(os.environ)), overrides)
    return Settings.model_validate(tree)


# Client-side variables share the prefix but are not server settings.
_CLIENT_VARIABLES = frozenset({"SMSGW_SERVER", "SMSGW_TOKEN", "SMSGW_VENV"})


def _env_tree(environ: Mapping[str, str]) -> dict[str, Any]:
    """SMSGW_BRIDGE__PING_INTERVAL=5 -> {"bridge": {"ping_interval": "5"}} (pydantic converts types)."""
    out: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith("SMSGW_") or key in _CLIENT_VARIABLES:
            continue
        *sections, leaf = key[len("SMSGW_") :].lower().split("__")
        node = out
        for part in sections:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"{key}: SMSGW_{part.upper()} is set to a value but {part!r} is a section")
        if isinstance(node.get(leaf), dict):
            raise ValueError(f"{key}: {leaf!r} is a section; set its keys as {key}__KEY")
        node[leaf] = value
    return out
