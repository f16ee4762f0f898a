"""jcs_bytes takes the C JSON encoder's fast path for plain values and rfc8785 otherwise; either
way its bytes (and errors) are rfc8785's, so every stored hash still verifies."""

from __future__ import annotations

import enum
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.canonical import _as_jcs_numbers, _is_plain, jcs_bytes


def _reference(value: Any) -> bytes | type[BaseException]:
    try:
        return rfc8785.dumps(_as_jcs_numbers(value))
    except Exception as error:  # the error type is what is compared
        return type(error)


def _fast(value: Any) -> bytes | type[BaseException]:
    try:
        return jcs_bytes(value)
    except Exception as error:
        return type(error)


# Every code point, surrogates included, weighted towards the ones either encoder treats
# specially: controls, quote, backslash, DEL, U+2028/9, the U+D800..U+FFFF band, astral chars.
_special = st.sampled_from(
    [
        *'\x00\x08\t\n\x0b\x0c\r\x1f "\\/\x7f\x80\u2028\u2029\ud7ff\ud800\udbff\udc00\udfff',
        *("\ue000", "\ufeff", "\uffff", "\U00010000", "\U0001f600", "\U0010ffff", "a", "é"),
    ]
)
_char = st.one_of(_special, st.characters(codec=None))
_text = st.text(alphabet=_char, max_size=12)
_edge_ints = st.sampled_from(
    [0, -1, 2**53 - 1, -(2**53 - 1), 2**53, -(2**53), 2**53 + 1, 10**16, 10**21, 2**1024]
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**60), max_value=2**60),
    _edge_ints,
    st.floats(allow_nan=True, allow_infinity=True),
    _text,
)
_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=5).map(tuple),
        st.dictionaries(_text, children, max_size=5),
    ),
    max_leaves=30,
)


@settings(max_examples=3000, deadline=None)
@given(_values)
def test_same_bytes_and_errors_as_rfc8785(value: Any) -> None:
    assert _fast(value) == _reference(value)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(_text, st.integers(-(2**53 - 1), 2**53 - 1), min_size=2, max_size=8))
def test_plain_objects_with_any_keys_sort_as_utf16(value: dict[str, int]) -> None:
    assert _fast(value) == _reference(value)


def _nested(depth: int) -> Any:
    value: Any = 1
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


class _Colour(str, enum.Enum):
    RED = "red"


class _Level(enum.IntEnum):
    HIGH = 3


@pytest.mark.parametrize(
    "value",
    [
        {"seq": 1, "data": {"score": 0.5, "n": 1.0}, "x": 1e16, "y": 1e21, "z": -0.0},
        {"b\U0001f600": 1, "b\uffff": 2, "b\ue000": 3, "a": 4},  # UTF-16 vs code point order
        {"k": "\ud800"},  # lone surrogate: rfc8785 hashes its escape
        {"\udc00": 1, "\\udc00": 2},  # ...which collides with the escape's own text
        {"k": '\x00\x1f\x7f\u2028\u2029"\\/\b\f\n\r\t'},
        {"n": 2**53 - 1, "m": -(2**53 - 1)},
        {"n": 2**53 + 1},  # rounds to a double
        {"n": 10**400},  # beyond any double: hashed as its digits
        {"n": _Level.HIGH, "s": _Colour.RED},
        {1: "int key"},
        {"k": {1, 2}},
        {"k": float("nan")},
        _nested(63),
        _nested(64),  # deeper than the fast path walks: rfc8785 writes it
        _nested(65),
        _nested(5000),  # too deep for either: the same RecursionError
        (1, "a", None, True, False),
        {},
        [],
        "",
    ],
)
def test_fixed_cases(value: Any) -> None:
    assert _fast(value) == _reference(value)


def test_event_bodies_take_the_fast_path() -> None:
    body = {
        "seq": 12,
        "created_at": "2026-11-30T00:00:00+00:00",
        "actor_id": None,
        "actor_label": "agent:écrivain",
        "verb": "proposal.submitted",
        "proposal_id": "0b9f8a7e-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
        "checkpoint_id": 3,
        "revision": 1,
        "data": {"status": "pending", "risk": "high", "tags": ["a", "b"], "amount": "12.50"},
        "reason": "",
        "hash_version": 3,
        "chain": 5,
        "chain_seq": 7,
    }
    assert _is_plain(body, 64)
    assert jcs_bytes(body) == rfc8785.dumps(_as_jcs_numbers(body))
