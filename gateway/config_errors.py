"""Configuration errors that say where (file and line, or environment variable) and which key,
and never a secret's value (issue 14, item 8).

PyYAML's messages quote the offending line and pydantic's may quote the input; either would
print `jwt.secret` or a database password to a terminal or a service log. These build the
message from positions and key names only, and drop anything quoted from a message about a
secret-bearing key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

__all__ = ["ConfigError", "Sources", "is_secret_key", "load_yaml", "explain_validation"]

Key = tuple[str, ...]

# A key whose value is (or may hold) a credential: jwt.secret, jwt.previous_secrets,
# gateway.private_token, push credentials, any *secret*/*token*/*password*; and the database
# URL, which may carry a password.
_SECRET_WORDS = ("secret", "token", "password", "passphrase", "credential", "private_key")
_SECRET_KEYS = frozenset({"database.url"})
_QUOTED = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"")
# `  key: ...` or `- key: ...` at the start of a line; the key a YAML line sets.
_KEY_LINE = re.compile(r"^(?P<indent> *)(?:- +)?(?P<key>[A-Za-z0-9_][A-Za-z0-9_.-]*) *:(?:[ \t]|$)")
# A model-level message that starts by naming its setting ("jwt.secret (and ...) must ...").
_LEADING_KEY = re.compile(r"^([a-z_]+(?:\.[a-z_]+)+)\b")


class ConfigError(ValueError):
    """Bad configuration: one line per problem, each naming its key and where it was set."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def is_secret_key(dotted: str) -> bool:
    key = dotted.lower()
    return key in _SECRET_KEYS or any(word in key for word in _SECRET_WORDS)


@dataclass(frozen=True)
class Sources:
    """Where each setting came from, by precedence: flags, then environment, then the file."""

    config_file: Path | None = None
    file_lines: Mapping[Key, int] = field(default_factory=dict)  # key path -> 1-based line
    env: Mapping[str, Any] = field(default_factory=dict)  # the SMSGW_* tree
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def where(self, path: Key) -> str | None:
        if _has(self.overrides, path):
            return "command line"
        if _has(self.env, path):
            return "SMSGW_" + "__".join(p.upper() for p in path)
        for end in range(len(path), 0, -1):  # the key's own line, else its section's
            line = self.file_lines.get(path[:end])
            if line is not None:
                return f"{self.config_file} line {line}"
        return None


def _has(tree: Mapping[str, Any], path: Key) -> bool:
    node: Any = tree
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def load_yaml(path: Path, text: str) -> tuple[Any, dict[Key, int]]:
    """The document and the line of every mapping key in it; a syntax error becomes a
    ConfigError naming the file, line, column and key, without the line's text."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_yaml_problem(path, text, exc)]) from None
    except yaml.YAMLError as exc:  # no position (e.g. a character YAML refuses): no details
        raise ConfigError([f"{path}: not valid YAML ({type(exc).__name__})"]) from None
    finally:
        loader.dispose()
    lines: dict[Key, int] = {}
    if node is not None:
        _key_lines(node, (), lines, budget=[100_000])
    return data, lines


def _key_lines(node: yaml.Node, prefix: Key, out: dict[Key, int], budget: list[int]) -> None:
    """Bounded walk (an alias-heavy document cannot make it run away)."""
    if not isinstance(node, yaml.MappingNode) or budget[0] <= 0:
        return
    for key_node, value_node in node.value:
        budget[0] -= 1
        if budget[0] <= 0:
            return
        if isinstance(key_node, yaml.ScalarNode):
            path = (*prefix, str(key_node.value))
            out.setdefault(path, key_node.start_mark.line + 1)
            _key_lines(value_node, path, out, budget)


def _yaml_problem(path: Path, text: str, exc: yaml.MarkedYAMLError) -> str:
    lines = text.splitlines()
    mark = exc.problem_mark or exc.context_mark
    assert mark is not None  # a MarkedYAMLError has at least one
    # An unterminated scalar or flow collection is reported where the file ends; the key is
    # on the line where it began.
    began = exc.context_mark if exc.context and re.search(r"scalar|flow", exc.context) else None
    key, on_line = _key_of_line(lines, (began or mark).line)
    secret = key is None or is_secret_key(key)
    what = ": ".join(part for part in (exc.context, exc.problem) if part)
    if secret:
        what = _QUOTED.sub("…", what)
    where = f"{path} line {mark.line + 1}, column {mark.column + 1}"
    if began is not None and began.line != mark.line:
        where = f"{path} line {began.line + 1} (to line {mark.line + 1})"
    if key:
        where += f" ({key})" if on_line else f" (after {key})"
    return f"{where}: not valid YAML: {what}"


def _key_of_line(lines: list[str], index: int) -> tuple[str | None, bool]:
    """The dotted key set on line `index`, else the nearest one above it (and False), from
    the indentation of the lines above: no parser is left to ask after a syntax error."""
    path: list[str] = []
    indent: int | None = None
    on_line = index < len(lines) and _KEY_LINE.match(lines[index]) is not None
    for i in range(min(index, len(lines) - 1), -1, -1):
        match = _KEY_LINE.match(lines[i])
        if match is None:
            continue
        level = len(match["indent"])
        if indent is None or level < indent:
            path.append(match["key"])
            indent = level
            if level == 0:
                break
    return ".".join(reversed(path)) or None, on_line


def explain_validation(exc: ValidationError, sources: Sources) -> ConfigError:
    """One line per pydantic error: the key, where it was set, pydantic's message without
    the input, and for a secret-bearing key without anything quoted from it."""
    problems = []
    for error in exc.errors():
        loc = tuple(str(p) for p in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        key_path = tuple(p for p in loc if not p.isdigit())  # a list item: its list's key
        leading = _LEADING_KEY.match(message)
        if leading is not None:  # a check across keys names the first itself
            key_path = tuple(leading[1].split("."))
        key = ".".join(key_path)
        value = error.get("input")
        if key and is_secret_key(key):
            if isinstance(value, str) and value:
                message = message.replace(value, "…")
            message = _QUOTED.sub("…", message)
        where = sources.where(key_path) if key_path else None
        if leading is not None:
            problems.append(f"{message} ({where})" if where else message)
        else:
            name = ".".join(loc)
            shown = f"{name} ({where})" if where else name
            problems.append(f"{shown}: {message}" if name else message)
    return ConfigError(problems)
