"""List pages rendered from `.values()` rows instead of model instances (issue 10): building a
Proposal (and its checkpoint and users) per row and walking DRF's serializer over them cost
ten times the page's SQL. The output is the serializer's own, field by field: each value goes
through the very field object `ProposalOutputSerializer` declares (`to_representation`), and
`None` stays `None` as DRF does, so the two cannot drift apart (tests/hitl/test_api_rows.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

from django.db.models import QuerySet

from hitl.api.serializers import ProposalOutputSerializer

# The serializer's fields whose value is not a column of the proposal row itself.
_RELATED_SOURCES = {
    "checkpoint": "checkpoint__slug",
    "submitted_by": "submitted_by__username",
    "claimed_by": "claimed_by__username",
}


@cache
def _plan() -> tuple[tuple[str, str, Callable[[Any], Any] | None], ...]:
    """(output name, values() key, converter or None for "as is") per field, in order."""
    plan = []
    for name, field in ProposalOutputSerializer().fields.items():
        source = _RELATED_SOURCES.get(name, name)
        # The related names are plain strings already (CharField would only str() them).
        convert = None if name in _RELATED_SOURCES else field.to_representation
        plan.append((name, source, convert))
    return tuple(plan)


def value_names() -> list[str]:
    return [source for _name, source, _convert in _plan()]


def proposal_rows(qs: QuerySet[Any]) -> QuerySet[Any]:
    """The list's queryset as the dicts `render` takes (same filters, order and slicing)."""
    return qs.values(*value_names())


def render(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    plan = _plan()
    return [
        {
            name: (row[source] if convert is None or row[source] is None else convert(row[source]))
            for name, source, convert in plan
        }
        for row in rows
    ]
