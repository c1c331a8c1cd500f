"""gateway.config.load_settings: defaults < YAML file < SMSGW_SECTION__KEY env < overrides."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.config import BridgeSettings, ConfigError, GrpcSettings, LimitsSettings, Settings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SMSGW_* variable from the developer's shell leaks into these tests."""
    for key in list(os.environ):
        if key.startswith("SMSGW_"):
            monkeypatch.delenv(key)


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "smsgw.yml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    s = load_settings()
    assert s == Settings()
    assert s.grpc.listen == GrpcSettings().listen == "127.0.0.1:50051"
    assert s.bridge.ping_interval == 20.0 and s.bridge.ping_timeout == 20.0
    assert s.database.sqlite_synchronous == "FULL"
    assert s.limits == LimitsSettings()
    assert s.database_url == f"sqlite:///{Path('smsgw-data') / 'smsgw.db'}"


def test_yaml_over_defaults(tmp_path: Path) -> None:
    cfg = write_yaml(tmp_path, "bridge:\n  ping_interval: 7\ngrpc:\n  listen: 0.0.0.0:1\ndata_dir: /srv/x\n")
    s = load_settings(cfg)
    assert s.bridge.ping_interval == 7.0
    assert s.bridge.ping_timeout == 20.0  # untouched keys of a section keep their defaults
    assert s.grpc.listen == "0.0.0.0:1"
    assert s.data_dir == Path("/srv/x")
    assert s.database_url == "sqlite:////srv/x/smsgw.db"


def test_empty_yaml_is_defaults(tmp_path: Path) -> None:
    assert load_settings(write_yaml(tmp_path, "")) == Settings()
    assert load_settings(write_yaml(tmp_path, "# only a comment\n")) == Settings()


def test_env_over_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write_yaml(tmp_path, "bridge:\n  ping_interval: 7\n  ping_timeout: 8\n")
    monkeypatch.setenv("SMSGW_BRIDGE__PING_INTERVAL", "5")
    monkeypatch.setenv("SMSGW_LIMITS__MAX_PARTS", "3")
    monkeypatch.setenv("SMSGW_DATABASE__URL", "postgresql://db/smsgw")
    monkeypatch.setenv("SMSGW_DATA_DIR", "/var/lib/smsgw")
    s = load_settings(cfg)
    assert s.bridge.ping_interval == 5.0  # env wins, converted to float
    assert s.bridge.ping_timeout == 8.0  # YAML key of the same section kept (deep merge)
    assert s.limits.max_parts == 3
    assert s.database_url == "postgresql://db/smsgw"
    assert s.data_dir == Path("/var/lib/smsgw")


def test_overrides_over_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write_yaml(tmp_path, "bridge:\n  ping_interval: 7\n  close_timeout: 3\n")
    monkeypatch.setenv("SMSGW_BRIDGE__PING_INTERVAL", "5")
    monkeypatch.setenv("SMSGW_BRIDGE__PING_TIMEOUT", "6")
    s = load_settings(cfg, bridge={"ping_interval": 1.5}, data_dir=tmp_path)
    assert s.bridge.ping_interval == 1.5  # override wins
    assert s.bridge.ping_timeout == 6.0  # env kept
    assert s.bridge.close_timeout == 3.0  # YAML kept
    assert s.data_dir == tmp_path


def test_full_precedence_chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = "SMSGW_GRPC__LISTEN"
    assert load_settings().grpc.listen == "127.0.0.1:50051"
    cfg = write_yaml(tmp_path, "grpc:\n  listen: yaml:1\n")
    assert load_settings(cfg).grpc.listen == "yaml:1"
    monkeypatch.setenv(key, "env:2")
    assert load_settings(cfg).grpc.listen == "env:2"
    assert load_settings(cfg, grpc={"listen": "flag:3"}).grpc.listen == "flag:3"


def test_env_is_case_insensitive_in_names_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMSGW_GRPC__LISTEN", "MixedCase:1")
    assert load_settings().grpc.listen == "MixedCase:1"


@pytest.mark.parametrize(
    ("yaml_text", "where"),
    [
        ("bridge:\n  ping_intervall: 5\n", "ping_intervall"),
        ("nosuchsection:\n  x: 1\n", "nosuchsection"),
        ("grpc:\n  listen: a\n  tls: true\n", "tls"),
    ],
)
def test_unknown_yaml_keys_rejected(tmp_path: Path, yaml_text: str, where: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write_yaml(tmp_path, yaml_text))
    text = str(info.value)
    assert where in text
    assert "Extra inputs are not permitted" in text


def test_unknown_env_key_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMSGW_BRIDGE__NO_SUCH_KEY", "1")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "no_such_key" in str(info.value)
    assert "Extra inputs are not permitted" in str(info.value)


def test_unknown_override_rejected() -> None:
    with pytest.raises(ConfigError, match="Extra inputs are not permitted"):
        load_settings(limits={"max_recipientz": 3})


def test_bad_value_rejected_with_its_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMSGW_BRIDGE__PING_INTERVAL", "soon")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "bridge.ping_interval" in str(info.value)
    monkeypatch.delenv("SMSGW_BRIDGE__PING_INTERVAL")
    with pytest.raises(ConfigError, match="sqlite_synchronous"):
        load_settings(write_yaml(tmp_path, "database:\n  sqlite_synchronous: OFF\n"))


def test_malformed_yaml_is_a_value_error_naming_the_file(tmp_path: Path) -> None:
    """`smsgw serve` reports (OSError, ValueError) from load_settings as "bad configuration";
    a YAML syntax error must be one of those, not a traceback."""
    cfg = write_yaml(tmp_path, "bridge: [1,\n")
    with pytest.raises(ValueError, match="smsgw.yml"):
        load_settings(cfg)


def test_env_section_given_as_a_value_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """SMSGW_BRIDGE=1 next to SMSGW_BRIDGE__PING_INTERVAL=5: a ValueError naming the
    variable, not a TypeError from inside the env parser."""
    monkeypatch.setenv("SMSGW_BRIDGE", "1")
    monkeypatch.setenv("SMSGW_BRIDGE__PING_INTERVAL", "5")
    with pytest.raises(ValueError, match="(?i)bridge"):
        load_settings()


def test_yaml_not_a_mapping_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mapping"):
        load_settings(write_yaml(tmp_path, "- a\n- b\n"))


@pytest.mark.parametrize("name", ["SMSGW_SERVER", "SMSGW_TOKEN", "SMSGW_VENV", "SMSGW_CREDENTIALS", "SMSGW_WEBHOOK_SECRET"])
def test_client_variables_are_ignored(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "whatever")
    assert load_settings() == Settings()


def test_client_variables_ignored_alongside_server_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMSGW_SERVER", "localhost:50051")
    monkeypatch.setenv("SMSGW_TOKEN", "smsgw_secret")
    monkeypatch.setenv("SMSGW_BRIDGE__MAX_WINDOW", "10")
    s = load_settings()
    assert s.bridge == BridgeSettings(max_window=10)


def test_settings_are_frozen() -> None:
    s = load_settings()
    with pytest.raises(ValidationError):
        s.bridge.ping_interval = 1.0  # type: ignore[misc]


def test_errors_are_described_one_line_per_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.config import describe_error

    monkeypatch.setenv("SMSGW_BRIDGE__PING_INTERVAL", "soon")
    with pytest.raises(ConfigError) as info:
        load_settings()
    text = describe_error(info.value)
    assert text.startswith("bridge.ping_interval (SMSGW_BRIDGE__PING_INTERVAL): ")
    assert "input_value" not in text and "\n" not in text
    monkeypatch.delenv("SMSGW_BRIDGE__PING_INTERVAL")
    monkeypatch.setenv("SMSGW_WEBHOOKS__ALLOW_HTTP", "true")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert describe_error(info.value) == "webhooks.allow_private_targets and webhooks.allow_http need gateway.mode private"
    assert describe_error(ValueError("plain")) == "plain"


# ---- errors name the file, line and key, never a secret's value (issue 14, item 8) ----------

SECRET = "Sup3r-s3cret-VALUE-never-shown-0123456789"


@pytest.mark.parametrize(
    ("yaml_text", "line"),
    [
        (f'jwt:\n  issuer: smsgw\n  secret: "{SECRET}\n  audience: smsgw\n', "line 3"),  # unterminated quote
        (f"jwt:\n  issuer: smsgw\n  secret: {SECRET}: more\n", "line 3, column"),  # a second colon
        (f'jwt:\n  issuer: smsgw\n  secret: "{SECRET}\\q"\n', "line 3, column"),  # a bad escape
        (f"jwt:\n  previous_secrets: [{SECRET}, {SECRET}\n", "line 2"),  # an unclosed list
    ],
)
def test_yaml_syntax_error_names_file_line_and_key_not_the_secret(tmp_path: Path, yaml_text: str, line: str) -> None:
    cfg = write_yaml(tmp_path, yaml_text)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    text = str(info.value)
    assert text.startswith(f"{cfg} {line}") and "not valid YAML" in text
    assert "(jwt.secret)" in text or "(jwt.previous_secrets)" in text
    assert SECRET not in text and SECRET[:6] not in text and "\n" not in text


def test_a_type_error_on_a_secret_key_names_its_line_not_its_value(tmp_path: Path) -> None:
    cfg = write_yaml(tmp_path, f"gateway:\n  mode: private\n  private_token:\n    - {SECRET}\njwt:\n  secret: {{a: {SECRET}}}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert info.value.problems == [
        f"gateway.private_token ({cfg} line 3): Input should be a valid string",
        f"jwt.secret ({cfg} line 6): Input should be a valid string",
    ]


def test_a_bad_env_override_names_the_variable_not_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMSGW_JWT__SECRET", SECRET[:20])  # too short
    with pytest.raises(ConfigError) as info:
        load_settings()
    text = str(info.value)
    assert text == "jwt.secret (and each of jwt.previous_secrets) must be at least 32 characters (SMSGW_JWT__SECRET)"
    monkeypatch.delenv("SMSGW_JWT__SECRET")
    monkeypatch.setenv("SMSGW_DATABASE__URL", f"postgresql://smsgw:{SECRET}@db:notaport/smsgw")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith("database.url (SMSGW_DATABASE__URL): not a database URL")
    assert SECRET not in str(info.value)


def test_is_secret_key() -> None:
    from gateway.config_errors import is_secret_key

    for key in ("jwt.secret", "jwt.previous_secrets", "gateway.private_token", "database.url", "push.credentials_file",
                "webhooks.signing_secret", "x.admin_password"):
        assert is_secret_key(key), key
    for key in ("jwt.issuer", "grpc.listen", "bridge.ping_interval", "database.sqlite_synchronous"):
        assert not is_secret_key(key), key
