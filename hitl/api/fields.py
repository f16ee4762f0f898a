"""Input fields that take JSON types at their word.

DRF's fields coerce: a CharField turns `123` into `"123"`, a FloatField turns `true` into `1.0`
(a confidence that passes any auto-approve threshold), an IntegerField takes `"5"` and `1.0`.
An agent that sends the wrong type has a bug, and the API must say so (400) rather than
guess. `InputSerializer` refuses, when the class is defined, any field that is not one of these,
so a new field is strict or the module does not import.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from proposals.policy import MAX_PAYLOAD_DEPTH as MAX_JSON_DEPTH  # one bound for every payload

WRONG_TYPE = "wrong_type"


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_JSON_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


class _StringOnly:
    """Mixin for string-valued fields: only a JSON string gets as far as DRF's coercions."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, str):
            raise serializers.ValidationError("Must be a string.", code=WRONG_TYPE)
        return super().to_internal_value(data)  # type: ignore[misc]


class StrictCharField(_StringOnly, serializers.CharField):
    pass


class StrictSlugField(_StringOnly, serializers.SlugField):
    pass


class StrictURLField(_StringOnly, serializers.URLField):
    pass


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string", "format": "uri", "maxLength": 500},
            {"type": "string", "enum": [""]},
        ],
        "description": "an absolute URL, or empty for none",
    }
)
class OptionalURLField(StrictURLField):
    """A URL or "" for none (the schema says so: "" is not a `format: uri`)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("allow_blank", True)
        kwargs.setdefault("max_length", 500)
        super().__init__(**kwargs)


class StrictChoiceField(_StringOnly, serializers.ChoiceField):
    """String choices only (`"5"` may be a choice; `5` is not)."""


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer: not `true`, not `"5"`, not `1.5` or `1.0`."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise serializers.ValidationError("Must be an integer.", code=WRONG_TYPE)
        return int(super().to_internal_value(data))


class StrictFloatField(serializers.FloatField):
    """A finite JSON number: not `true` (Python's bool is an int), not `"0.9"`."""

    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, bool) or not isinstance(data, int | float):
            raise serializers.ValidationError("Must be a number.", code=WRONG_TYPE)
        try:
            value = float(data)
        except OverflowError:  # float(10**400): DRF only catches TypeError/ValueError
            raise serializers.ValidationError("Must be a finite number.") from None
        if not math.isfinite(value):
            raise serializers.ValidationError("Must be a finite number.")
        return float(super().to_internal_value(value))


@extend_schema_field(
    {
        "oneOf": [
            {"type": "number"},
            {"type": "string", "pattern": r"^-?(?:\d+(?:\.\d*)?|\.\d+)$"},
        ],
        "description": "a decimal: a JSON number, or a string of digits for exact values",
    }
)
class StrictDecimalField(serializers.DecimalField):
    """A JSON number or a decimal string (strings keep exact amounts that a double cannot)."""

    def to_internal_value(self, data: Any) -> Decimal:
        if isinstance(data, bool) or not isinstance(data, int | float | str):
            raise serializers.ValidationError("Must be a number or a decimal string.", WRONG_TYPE)
        return Decimal(super().to_internal_value(data))


@extend_schema_field(OpenApiTypes.OBJECT)
class JSONObjectField(serializers.JSONField):
    """A JSON object (not a list or scalar), bounded in depth."""

    default_error_messages = {
        "not_object": "Must be a JSON object.",
        "too_deep": f"Nested deeper than {MAX_JSON_DEPTH} levels.",
    }

    def to_internal_value(self, data: Any) -> Any:
        value = super().to_internal_value(data)
        if not isinstance(value, dict):
            self.fail("not_object")
        if _depth(value) > MAX_JSON_DEPTH:
            self.fail("too_deep")
        return value


class AnyJSONField(serializers.JSONField):
    """Any JSON value, on purpose: validated further by the code that reads it (bulk items go
    through the submit serializer one by one, so each gets its own error)."""


class StrictListField(serializers.ListField):
    """A JSON array of strict items (DRF's ListField also takes a form's repeated keys)."""

    def to_internal_value(self, data: Any) -> list[Any]:
        if not isinstance(data, list):
            self.fail("not_a_list", input_type=type(data).__name__)
        return list(super().to_internal_value(data))


class StrictDictField(serializers.DictField):
    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            self.fail("not_a_dict", input_type=type(data).__name__)
        return dict(super().to_internal_value(data))


STRICT_LEAVES: tuple[type[serializers.Field], ...] = (
    StrictCharField,
    StrictSlugField,
    StrictURLField,
    OptionalURLField,
    StrictChoiceField,
    StrictIntegerField,
    StrictFloatField,
    StrictDecimalField,
    JSONObjectField,
    AnyJSONField,
)


def non_strict_fields(serializer: serializers.Serializer, prefix: str = "") -> list[str]:
    """The dotted names of fields (nested ones included) that would coerce a JSON type."""
    bad = []
    for name, field in serializer.fields.items():
        path = f"{prefix}{name}"
        bad.extend(_non_strict(field, path))
    return bad


def _non_strict(field: serializers.Field | None, path: str) -> list[str]:
    if isinstance(field, StrictListField | StrictDictField):
        return _non_strict(field.child, f"{path}[]")
    if isinstance(field, serializers.ListSerializer):
        return _non_strict(field.child, f"{path}[]")
    if isinstance(field, InputSerializer):
        return non_strict_fields(field, f"{path}.")
    if isinstance(field, STRICT_LEAVES):
        return []
    return [f"{path} ({type(field).__name__})"]


class InputSerializer(serializers.Serializer):
    """Base of every request-body serializer: only strict fields, checked at class creation."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        bad = non_strict_fields(cls())
        if bad:
            raise TypeError(
                f"{cls.__name__}: fields that coerce JSON types: {', '.join(bad)}. Use the "
                "strict fields of hitl.api.fields."
            )
