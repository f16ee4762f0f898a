"""What the reviewer's pages need beyond the services: payload diffs as rows, and the
edit-and-approve form built from a JSON Schema or, without one, inferred from the payload.

Pure functions on plain values (no database), so they are tested table-driven."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from jsonschema.exceptions import SchemaError

from proposals.policy import PayloadValidator

MISSING = object()


# --- diffs ---------------------------------------------------------------------------------


def _pointer_part(key: Any) -> str:
    return str(key).replace("~", "~0").replace("/", "~1")


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """JSON Pointer -> leaf value. Empty objects and lists are leaves of their own."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, child in value.items():
            out.update(flatten(child, f"{prefix}/{_pointer_part(key)}"))
        return out
    if isinstance(value, list) and value:
        out = {}
        for index, child in enumerate(value):
            out.update(flatten(child, f"{prefix}/{index}"))
        return out
    return {prefix or "/": value}


@dataclass(frozen=True)
class DiffRow:
    path: str
    before: str  # canonical JSON text, "" when absent
    after: str
    state: str  # "same" | "changed" | "added" | "removed"


def _text(value: Any) -> str:
    return "" if value is MISSING else json.dumps(value, ensure_ascii=False, sort_keys=True)


def diff_rows(before: Any, after: Any) -> list[DiffRow]:
    """Side-by-side rows of two payloads, one per leaf, in the order the paths first appear."""
    left, right = flatten(before), flatten(after)
    paths = list(left) + [p for p in right if p not in left]
    rows = []
    for path in paths:
        a, b = left.get(path, MISSING), right.get(path, MISSING)
        if a is MISSING:
            state = "added"
        elif b is MISSING:
            state = "removed"
        elif json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True):
            state = "same"
        else:
            state = "changed"
        rows.append(DiffRow(path=path, before=_text(a), after=_text(b), state=state))
    return rows


def changed_paths(patch: list[dict[str, Any]] | None) -> list[str]:
    """The fields an RFC 6902 patch touched, for the revision timeline."""
    return [str(op.get("path", "")) for op in patch or [] if isinstance(op, dict)]


# --- the edit-and-approve form -------------------------------------------------------------


@dataclass
class EditField:
    name: str  # the form field's name: "f-<index>"
    key: str  # the payload key it edits
    widget: str  # "checkbox" | "number" | "select" | "text" | "json"
    value: Any
    required: bool = False
    label: str = ""
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    step: str = "any"
    choices: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def text(self) -> str:
        """The value as the widget shows it."""
        if self.widget == "json":
            return json.dumps(self.value, indent=2, ensure_ascii=False)
        if self.value is None or self.value is MISSING:
            return ""
        if self.widget == "select":
            return json.dumps(self.value) if not isinstance(self.value, str) else self.value
        return str(self.value)


def _widget_for_schema(prop: dict[str, Any], value: Any) -> str:
    kind = prop.get("type")
    if isinstance(kind, list):  # ["integer", "null"]: the first non-null type decides
        kind = next((k for k in kind if k != "null"), None)
    if "enum" in prop and all(isinstance(v, str) for v in prop["enum"]):
        return "select"
    if kind == "boolean":
        return "checkbox"
    if kind in ("integer", "number"):
        return "number"
    if kind == "string":
        return "text"
    if kind in ("object", "array"):
        return "json"
    return _widget_for_value(value)


def _widget_for_value(value: Any) -> str:
    if isinstance(value, bool):
        return "checkbox"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "text"
    return "json"  # objects, lists, null


def edit_fields(payload: dict[str, Any], schema: dict[str, Any] | None) -> list[EditField]:
    """One field per top-level key: the schema's properties (with their bounds, enums and
    required marks) first, then payload keys the schema does not describe."""
    properties: dict[str, Any] = {}
    required: set[str] = set()
    if schema and isinstance(schema.get("properties"), dict):
        properties = schema["properties"]
        required = {str(k) for k in schema.get("required") or []}
    keys = list(properties) + [k for k in payload if k not in properties]
    fields = []
    for index, key in enumerate(keys):
        value = payload.get(key, MISSING)
        prop = properties.get(key) if isinstance(properties.get(key), dict) else None
        widget = _widget_for_schema(prop, value) if prop else _widget_for_value(value)
        item = EditField(
            name=f"f-{index}",
            key=key,
            widget=widget,
            value=None if value is MISSING else value,
            required=key in required,
            label=str((prop or {}).get("title") or key),
            help=str((prop or {}).get("description") or ""),
        )
        if prop:
            item.minimum = prop.get("minimum", prop.get("exclusiveMinimum"))
            item.maximum = prop.get("maximum", prop.get("exclusiveMaximum"))
            kind = prop.get("type")
            if kind == "integer" or (isinstance(kind, list) and "integer" in kind):
                item.step = "1"
            if widget == "select":
                item.choices = [str(v) for v in prop["enum"]]
        elif widget == "number" and isinstance(value, int):
            item.step = "1"
        fields.append(item)
    return fields


def _number(text: str, step: str) -> int | float:
    value = float(text)
    if step == "1" or (value.is_integer() and "." not in text and "e" not in text.lower()):
        if not value.is_integer():
            raise ValueError("a whole number is required")
        return int(value)
    return value


def read_edit(
    fields: list[EditField], data: Any, payload: dict[str, Any]
) -> tuple[dict[str, Any], bool]:
    """The edited payload from POSTed form data, and whether every field parsed. Keys the
    form did not show stay as they were; an emptied optional field removes its key."""
    edited = dict(payload)
    ok = True
    for item in fields:
        raw = data.get(item.name)
        try:
            if item.widget == "checkbox":
                edited[item.key] = item.value = raw == "on"
                continue
            text = (raw or "").strip()
            if not text:
                if item.required:
                    raise ValueError("required")
                edited.pop(item.key, None)
                item.value = None
                continue
            if item.widget == "number":
                edited[item.key] = _number(text, item.step)
            elif item.widget == "json":
                edited[item.key] = json.loads(text)
            elif item.widget == "select" and item.choices and text not in item.choices:
                raise ValueError("not one of the choices")
            else:
                edited[item.key] = text
            item.value = edited[item.key]  # the form shows what the reviewer entered
        except ValueError as exc:
            item.error = "Not valid JSON." if item.widget == "json" else str(exc).capitalize()
            item.value = raw
            ok = False
    return edited, ok


def schema_errors(schema: dict[str, Any] | None, payload: Any) -> list[str]:
    """Draft 2020-12 validation messages, each prefixed with the failing path."""
    if not schema:
        return []
    try:
        validator = PayloadValidator(schema)  # patterns on RE2, as for every payload
    except SchemaError as exc:
        return [f"The schema itself is invalid: {exc.message}"]
    messages = []
    for error in sorted(validator.iter_errors(payload), key=lambda e: list(e.absolute_path)):
        where = "/" + "/".join(_pointer_part(p) for p in error.absolute_path)
        messages.append(f"{where}: {error.message}")
    return messages


def payload_schema(proposal: Any) -> dict[str, Any] | None:
    """The schema the payload must satisfy: the proposal's own, else its checkpoint's.
    (The `payload_schema` fields arrive with issue 8's typed payloads; absent means none.)"""
    own = getattr(proposal, "payload_schema", None)
    if isinstance(own, dict) and own:
        return own
    declared = getattr(proposal.checkpoint, "payload_schema", None)
    return declared if isinstance(declared, dict) and declared else None
