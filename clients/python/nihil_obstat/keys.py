"""Deterministic `Idempotency-Key`s: the same step of the same run asks once.

A crashed agent that restarts and repeats a step with the same arguments derives the same
key, and the server answers with the proposal it already has instead of making another.
Different arguments, another checkpoint or another `run_id` make another key.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import hashlib
import json
import uuid
from typing import Any

KEY_PREFIX = "no1-"  # versioned: a change of derivation must never reuse old keys


def jsonable(value: Any) -> Any:
    """Arguments as plain JSON: pydantic models and dataclasses as their fields, dates as
    ISO strings, decimals and UUIDs as strings, tuples and sets as lists (sets sorted)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    dump = getattr(value, "model_dump", None)
    if callable(dump):  # pydantic v2
        return jsonable(dump(mode="json"))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((jsonable(v) for v in value), key=canonical_json)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    raise TypeError(f"cannot send {type(value).__name__} as JSON")


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 kept: equal data, equal text."""
    return json.dumps(
        jsonable(value),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )


def idempotency_key(checkpoint: str, action: str, arguments: Any, run_id: str | None = None) -> str:
    """sha256 over (checkpoint, action, canonical arguments, run id)."""
    material = canonical_json([checkpoint, action, arguments, run_id])
    return KEY_PREFIX + hashlib.sha256(material.encode()).hexdigest()
