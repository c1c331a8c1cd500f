"""The installed smsgw's version, for `smsgw --version`, `smsgw_build_info` and the SMSGate
API's health answer (one source: the package metadata pyproject.toml writes)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["installed_version"]


def installed_version() -> str:
    try:
        return version("smsgw")
    except PackageNotFoundError:
        return "unknown"
