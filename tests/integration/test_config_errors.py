"""Issue 14 item 8: a bad configuration stops `smsgw serve` / `smsgw users` with exit 2 and one
line naming the file and line (or the environment variable) and the key, never a secret's
value: the real command as an operator runs it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers.server import SMSGW

SECRET = "Sup3r-s3cret-VALUE-never-shown-0123456789"


def _smsgw(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SMSGW_")}
    return subprocess.run([SMSGW, *args, "--data-dir", str(tmp_path / "data")], capture_output=True, text=True,
                          timeout=60, env={**clean, **(env or {})})


@pytest.mark.parametrize(
    ("command", "yaml_text", "expected"),
    [
        # A YAML syntax error on the secret's line (an unterminated quote): PyYAML quotes the line.
        (("serve", "--grpc-listen", "127.0.0.1:0"), f'grpc:\n  listen: 127.0.0.1:0\njwt:\n  secret: "{SECRET}\n  issuer: x\n',
         "line 4 (to line 6) (jwt.secret): not valid YAML"),
        # A type error on secret keys.
        (("users", "list"), f"gateway:\n  mode: private\n  private_token: [{SECRET}]\n",
         "gateway.private_token ({cfg} line 3): Input should be a valid string"),
    ],
)
def test_a_bad_config_file_names_file_line_and_key_not_the_secret(
    tmp_path: Path, command: tuple[str, ...], yaml_text: str, expected: str
) -> None:
    cfg = tmp_path / "smsgw.yml"
    cfg.write_text(yaml_text)
    result = _smsgw(tmp_path, *command, "--config", str(cfg))
    assert result.returncode == 2, result.stderr
    assert expected.format(cfg=cfg) in result.stderr and str(cfg) in result.stderr
    assert SECRET not in result.stderr + result.stdout and SECRET[:6] not in result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


def test_a_bad_env_override_names_the_variable_not_the_value(tmp_path: Path) -> None:
    result = _smsgw(tmp_path, "serve", "--grpc-listen", "127.0.0.1:0", env={"SMSGW_JWT__SECRET": SECRET[:24]})
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        "smsgw serve: bad configuration: jwt.secret (and each of jwt.previous_secrets) must be at least"
        " 32 characters (SMSGW_JWT__SECRET)\n"
    )
    assert not (tmp_path / "data").exists()  # stopped before anything was created
