"""The bytes an audit event's hash covers: RFC 8785 (JCS) with every number read as the IEEE
double JSON means.

`rfc8785` is pure Python and was ~40 % of the CPU of seeding and of `audit_verify`. Most event
bodies are strings, small ints, bools, nulls, lists and dicts with ASCII keys, and for those
Python's C JSON encoder writes exactly the JCS bytes; `jcs_bytes` uses it when a walk of the
value shows it is one of those, and `rfc8785` otherwise, so no byte of any hash changes
(tests/audit/test_canonical.py checks both paths agree on arbitrary values, errors included).
"""

from __future__ import annotations

import json
from typing import Any

import rfc8785

# Integers up to here are doubles exactly, and JCS writes such a double as the integer's digits
# (below 1e21 without exponent, shortest digits that round-trip: the integer's own). Beyond it
# float(n) may round, and JCS then writes the rounded double's digits.
_EXACT_INT = 2**53 - 1
# The C encoder and `rfc8785` run out of stack at different depths; within this, neither does.
_MAX_DEPTH = 64
# One encoder for every call: json.dumps with options builds a new one each time. No cycle check:
# a cyclic value is deeper than _MAX_DEPTH, so never reaches it.
_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, check_circular=False
)


def jcs_bytes(value: Any) -> bytes:
    """rfc8785.dumps(_as_jcs_numbers(value)), byte for byte and error for error."""
    try:
        plain = _is_plain(value, _MAX_DEPTH)
    except RecursionError:
        plain = False
    if plain:
        text = _ENCODER.encode(value)
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate, which _utf8 rewrites
            pass
    return rfc8785.dumps(_as_jcs_numbers(value))


def _is_plain(value: Any, depth: int) -> bool:
    """Whether the C encoder's text for `value` is its JCS text. Exact types only: subclasses
    (IntEnum, str enums) may serialise differently in either encoder. Not floats: JCS writes
    them as ECMAScript does (1.0 -> 1, 1e21 -> 1e+21), Python does not. Not keys with a char from
    U+D800 on: JCS sorts keys by UTF-16 code units, Python by code points, and the two orders
    differ only there (astral chars are surrogate pairs, below U+E000..U+FFFF in UTF-16)."""
    kind = type(value)
    if kind is dict:
        if depth == 0:
            return False
        for key, item in value.items():
            if type(key) is not str or not (key.isascii() or max(key) < "\ud800"):
                return False
            # Scalars inline: a call per value was most of this walk's cost.
            kind = type(item)
            if kind is str or item is None or kind is bool:
                continue
            if kind is int:
                if -_EXACT_INT <= item <= _EXACT_INT:
                    continue
                return False
            if not _is_plain(item, depth - 1):
                return False
        return True
    if kind is list or kind is tuple:
        if depth == 0:
            return False
        return all(_is_plain(item, depth - 1) for item in value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return -_EXACT_INT <= value <= _EXACT_INT
    return False


def _as_jcs_numbers(value: Any) -> Any:
    """Every number as the IEEE double JSON means (RFC 8785 / I-JSON): 1e16, 10000000000000000
    and 1.0e16 are one value, whatever text or type a database hands back. Integers beyond
    2**53 therefore hash at double precision, as in every JCS implementation."""
    if isinstance(value, str):
        return _utf8(value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:  # beyond any double: no JSON number means it; keep the digits
            return str(value)
    if isinstance(value, dict):
        return {_utf8(key): _as_jcs_numbers(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_as_jcs_numbers(item) for item in value]
    return value


def _utf8(text: str) -> str:
    """JSON's "\\ud800" parses to a lone surrogate, which SQLite stores and hands back but
    RFC 8785 (UTF-8 only) refuses: hash its escape instead of failing the write."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text
