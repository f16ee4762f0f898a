"""Template helpers for the reviewer's pages: JSON shown as JSON (never a Python repr),
payloads as tables with nested values folded, deadlines the page's script counts down."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django import template
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from django.utils.timezone import now

register = template.Library()


@register.filter
def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


def _scalar(value: Any) -> SafeString:
    if isinstance(value, str):
        return format_html('<span class="j-str">{}</span>', value)
    return format_html('<span class="j-lit">{}</span>', json.dumps(value))


def _cell(value: Any, depth: int) -> SafeString:
    if isinstance(value, dict | list):
        if not value:
            return format_html('<span class="j-lit">{}</span>', json.dumps(value))
        size = f"{len(value)} {'fields' if isinstance(value, dict) else 'items'}"
        # Nested values start folded: the top level is what a reviewer scans first.
        return format_html(
            "<details{}><summary>{}</summary>{}</details>",
            mark_safe(" open") if depth == 0 and len(value) <= 3 else "",
            size,
            _table(value, depth + 1),
        )
    return _scalar(value)


def _table(value: dict[str, Any] | list[Any], depth: int) -> SafeString:
    items = value.items() if isinstance(value, dict) else enumerate(value)
    rows = format_html_join(
        "", '<tr><th scope="row">{}</th><td>{}</td></tr>', ((k, _cell(v, depth)) for k, v in items)
    )
    return format_html('<table class="kv">{}</table>', rows)


@register.simple_tag
def payload_table(value: Any) -> SafeString:
    if isinstance(value, dict | list) and value:
        return _table(value, 0)
    return _scalar(value)


@register.simple_tag
def deadline(value: datetime | None, label: str = "") -> SafeString:
    """A <time> the page's script turns into a live countdown ("in 2h 5m", "3m overdue")."""
    if value is None:
        return format_html('<span class="muted">{}</span>', "—")
    overdue = value <= now()
    return format_html(
        '<time class="countdown{}" datetime="{}" data-deadline="{}" title="{}{}">{}</time>',
        " overdue" if overdue else "",
        value.isoformat(),
        value.isoformat(),
        f"{label} " if label else "",
        value.strftime("%Y-%m-%d %H:%M UTC"),
        value.strftime("%Y-%m-%d %H:%M"),
    )


@register.simple_tag
def age(value: datetime | None) -> SafeString:
    if value is None:
        return format_html("{}", "—")
    return format_html(
        '<time class="age" datetime="{}" data-since="{}">{}</time>',
        value.isoformat(),
        value.isoformat(),
        value.strftime("%Y-%m-%d %H:%M"),
    )


@register.filter
def confidence_class(value: float | None) -> str:
    if value is None:
        return "conf-none"
    if value >= 0.9:
        return "conf-high"
    if value >= 0.6:
        return "conf-mid"
    return "conf-low"


@register.filter
def percent(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value * 100:.{digits}f} %"


@register.filter
def seconds_human(value: float | None) -> str:
    if value is None:
        return "—"
    seconds = int(value)
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


@register.filter
def get_item(mapping: Any, key: Any) -> Any:
    try:
        return mapping[key]
    except (KeyError, IndexError, TypeError):
        return None


@register.simple_tag(takes_context=True)
def manages_any(context: template.Context) -> bool:
    """Whether the signed-in user manages a checkpoint (the dashboard link), once per page."""
    request = context.get("request")
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return False
    cached = getattr(request, "_hitl_manages_any", None)
    if cached is None:
        from proposals.permissions import MANAGE, access_for

        cached = bool(access_for(user).ids(MANAGE))
        request._hitl_manages_any = cached  # type: ignore[union-attr]
    return bool(cached)
