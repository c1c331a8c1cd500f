"""The text of a code's SMS: the caller's template with `{code}` and `{ttl_minutes}`, and, for
an Android app's SMS Retriever, its 11-character app hash alone on the last line, the whole in
one SMS part (docs/otp.md, "SMS Retriever")."""

from __future__ import annotations

import re

from gateway.errors import InvalidArgument
from smsgw_client.segments import count_segments

__all__ = ["DEFAULT_TEMPLATE", "render", "check_template"]

DEFAULT_TEMPLATE = "Your code is {code}"
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_APP_HASH = re.compile(r"[A-Za-z0-9+/]{11}")
_MAX_TEMPLATE = 480


def check_template(template: str, app_hash: str) -> None:
    """InvalidArgument naming the field: `{code}` once, no other placeholder than
    `{ttl_minutes}`, an app hash of 11 base64 characters."""
    if len(template) > _MAX_TEMPLATE:
        raise InvalidArgument("template", f"at most {_MAX_TEMPLATE} characters")
    names = _PLACEHOLDER.findall(template)
    if names.count("code") != 1:
        raise InvalidArgument("template", "must contain {code} exactly once")
    unknown = sorted({n for n in names if n not in ("code", "ttl_minutes")})
    if unknown:
        raise InvalidArgument("template", f"unknown placeholder {{{unknown[0]}}}: only {{code}} and {{ttl_minutes}}")
    if app_hash and not _APP_HASH.fullmatch(app_hash):
        raise InvalidArgument("app_hash", "the SMS Retriever hash: 11 characters of base64 (A-Z a-z 0-9 + /)")


def render(template: str, code: str, ttl_minutes: int, app_hash: str, max_parts: int) -> tuple[str, int, str]:
    """(text, parts, encoding). With an app hash the text must fit one SMS part."""
    text = template.replace("{ttl_minutes}", str(ttl_minutes)).replace("{code}", code)
    if app_hash:
        text = f"{text.rstrip()}\n{app_hash}"
    count = count_segments(text)
    limit = 1 if app_hash else max_parts
    if count.parts > limit:
        field = "template"
        why = "with app_hash the SMS must fit one part (SMS Retriever)" if app_hash else f"at most {max_parts} SMS parts"
        raise InvalidArgument(field, f"{why}; it needs {count.parts} ({count.encoding})")
    return text, count.parts, count.encoding
