"""Template helpers for the reviewer's pages: JSON shown as JSON (never a Python repr),
payloads as tables with nested values folded, deadlines the page's script counts down."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django import template
from django.template.defaultfilters import floatformat, truncatechars
from django.urls import reverse
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

        # The view's own Access when it left it on the request (the API's authentication
        # and the queue do): the grants are read once per request, not again for the menu.
        access = getattr(request, "hitl_access", None) or access_for(user)
        cached = bool(access.ids(MANAGE))
        request._hitl_manages_any = cached  # type: ignore[union-attr]
    return bool(cached)


# One queue row (templates/hitl/_queue_rows.html), built here rather than by the template
# language: a page of 50 rows took the template engine about two thirds of the queue's CPU.
_QUEUE_ROW = """
<tr data-proposal="{id}" data-revision="{revision}" data-checkpoint="{checkpoint}" \
data-url="{url}" data-decide-url="{url}decide/" data-edit-url="{url}edit/" data-title="{title}" \
data-reason-on="{reason_on}" data-has-options="{has_options}" class="prio-{priority}">
  <td><input type="checkbox" name="items" value="{id}@{revision}" form="bulk-form" \
aria-label="Select {title}"></td>
  <td class="title"><a href="{url}">{title}</a>
    <div class="muted small">r{revision}{summary}</div></td>
  <td>{checkpoint}</td>
  <td><span class="prio prio-{priority}">{priority}</span></td>
  <td>{confidence}</td>
  <td>{impact}</td>
  <td>{age}</td>
  <td>{sla}</td>
  <td>{timeout}</td>
  <td><span class="quorum" title="{approvals} of {quorum} approvals">\
{approvals}/{quorum}</span></td>
  <td>{claimed}</td>
</tr>
"""
_NONE = format_html('<span class="muted">{}</span>', "—")


@register.simple_tag
def queue_rows(rows: list[dict[str, Any]], user_id: int | None) -> SafeString:
    """The queue's rows from `hitl.views.QUEUE_ROW_FIELDS` dicts, every value escaped."""
    base = reverse("queue")
    html = []
    for p in rows:
        confidence = p["confidence"]
        impact = p["impact"]
        claimer = p["claimed_by_id"]
        html.append(
            format_html(
                _QUEUE_ROW,
                id=p["id"],
                url=f"{base}{p['id']}/",
                revision=p["revision"],
                checkpoint=p["checkpoint__slug"],
                title=p["title"],
                reason_on=",".join(p["checkpoint__require_reason_on"] or ()),
                has_options="1" if p["options"] else "",
                priority=p["priority"],
                summary=format_html(" · {}", truncatechars(p["summary"], 90))
                if p["summary"]
                else "",
                confidence=_NONE
                if confidence is None
                else format_html(
                    '<span class="badge {}">{}</span>',
                    confidence_class(confidence),
                    floatformat(confidence, 2),
                ),
                impact=_NONE if impact is None else floatformat(impact, "-2"),
                age=age(p["created_at"]),
                sla=deadline(p["sla_due_at"], "SLA"),
                timeout=deadline(p["due_at"], "timeout"),
                approvals=p["approvals"],
                quorum=p["quorum_required"],
                claimed=_NONE
                if not claimer
                else format_html(
                    '<span class="claim{}">{}</span>',
                    " mine" if claimer == user_id else "",
                    p["claimed_by__username"],
                ),
            )
        )
    return mark_safe("".join(html))  # noqa: S308 (each part is format_html's, escaped)
