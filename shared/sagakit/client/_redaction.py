"""Personal data out of what the dead-letter tool shows, unless the operator asks for it.

sagakit does not know a flow's payloads, and a parked message may not even be valid JSON,
so fields are recognised by name, at any depth: e-mail addresses, postal addresses and
their parts, names, phone numbers, payment tokens and card numbers. Anything that looks
like an e-mail address is masked wherever it appears, even in a body that does not parse.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

REDACTED = "[redacted]"

PERSONAL_FIELDS = frozenset(
    {
        "email",
        "e_mail",
        "phone",
        "phone_number",
        "mobile",
        "address",
        "name",
        "full_name",
        "first_name",
        "last_name",
        "line1",
        "line2",
        "street",
        "city",
        "postal_code",
        "zip",
        "zip_code",
        "date_of_birth",
        "payment_method",
        "card",
        "card_number",
        "iban",
        "password",
    }
)
"""Field names whose values are personal data, compared in lower case."""

_PERSONAL_SUFFIXES = ("_email", "_address", "_phone", "_token", "_name")

_EMAIL = re.compile(r"[^\s@\"'<>(),;:\\]+@[^\s@\"'<>(),;:\\]+\.[^\s@\"'<>(),;:\\]+")


def is_personal(field: str) -> bool:
    """True when a field of this name holds personal data."""
    name = field.lower()
    return name in PERSONAL_FIELDS or name.endswith(_PERSONAL_SUFFIXES)


def redact_value(value: Any) -> Any:
    """``value`` with personal fields replaced, at any depth, and e-mail addresses masked."""
    if isinstance(value, Mapping):
        return {
            key: REDACTED if is_personal(str(key)) else redact_value(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact_value(item) for item in value]
    if isinstance(value, str):
        return _EMAIL.sub(REDACTED, value)
    return value


def _text_patterns() -> re.Pattern[str]:
    names = "|".join(re.escape(name) for name in sorted(PERSONAL_FIELDS))
    suffixes = "|".join(re.escape(suffix) for suffix in _PERSONAL_SUFFIXES)
    key = rf'"(?i:(?:{names})|[^"]*(?:{suffixes}))"'
    # A string (maybe cut off), a flat object (maybe cut off), or a bare scalar.
    value = r'(?:"(?:[^"\\]|\\.)*"?|\{[^{}]*\}?|[^,}\]\s]+)'
    return re.compile(rf"({key}\s*:\s*){value}")


_PERSONAL_TEXT = _text_patterns()


def redact_text(text: str) -> str:
    """Personal fields masked in text that is not valid JSON (a truncated body, say)."""
    return _EMAIL.sub(REDACTED, _PERSONAL_TEXT.sub(rf'\1"{REDACTED}"', text))


def redacted_body(body: bytes, *, show_personal_data: bool = False) -> str:
    """A body for display: pretty JSON, or text; personal data masked unless asked for."""
    try:
        document = json.loads(body)
        if not show_personal_data:
            document = redact_value(document)
        return json.dumps(document, indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):
        text = body.decode("utf-8", errors="replace")
        return text if show_personal_data else redact_text(text)
