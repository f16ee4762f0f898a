"""A stricter JSON parser: every malformed body is a 400, never a 500 further down."""

from __future__ import annotations

import json
import math
from typing import Any

from django.conf import settings
from rest_framework.exceptions import APIException, ParseError
from rest_framework.parsers import JSONParser


def _reject_unstorable(value: Any) -> None:
    """Refuse what parses as JSON but cannot be stored: U+0000 and lone surrogates
    (PostgreSQL text and jsonb cannot hold them) and numbers that overflow to infinity
    (`1e400`). A 400 here instead of a 500 at the database."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                raise ParseError("Numbers must be finite (this one overflows a double).")
        elif isinstance(item, str):
            if "\x00" in item:
                raise ParseError("Strings may not contain the NUL character (\\u0000).")
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ParseError("Strings must be valid Unicode (lone surrogate escape).") from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


class PayloadTooLarge(APIException):
    status_code = 413
    default_code = "payload_too_large"
    default_detail = "Request body too large."


class StrictJSONParser(JSONParser):
    def parse(self, stream: Any, media_type: Any = None, parser_context: Any = None) -> Any:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        raw = stream.read(limit + 1) if stream is not None else b""
        if limit is not None and len(raw) > limit:
            raise PayloadTooLarge(f"Request body larger than {limit} bytes.")
        if not raw:
            return {}
        try:
            data = json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
        except (ValueError, RecursionError) as exc:
            raise ParseError(f"JSON parse error: {exc}") from None
        _reject_unstorable(data)
        return data


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")
