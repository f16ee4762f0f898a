"""The reviewer's desk and the manager's dashboard in headless Chromium, against a live
uvicorn + Celery worker on PostgreSQL and Redis (fixtures from test_browser_queue).

Every test also listens to the console: a Content-Security-Policy violation or a script error
on any page fails it. Screenshots go to .artifacts/browser/ (gitignored) for the record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings

from proposals.models import Proposal, Status
from tests.factories import submit, token_for
from tests.hitl import test_browser_queue as harness

PASSWORD = harness.PASSWORD
# The live server (uvicorn + worker) and Chromium fixtures, shared with the queue's tests.
live = harness.live
browser = harness.browser

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ARTIFACTS = Path(settings.BASE_DIR) / ".artifacts" / "browser"
WAIT = 10_000  # ms: bounded waits that catch a broken path, not a slow machine


class Watched:
    """A logged-in page whose console is checked for CSP violations and script errors."""

    def __init__(self, browser: Any, url: str, username: str, width: int = 1280) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": 900})
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        self.page.goto(f"{url}/accounts/login/?next=/queue/")
        self.page.fill("input[name=username]", username)
        self.page.fill("input[name=password]", PASSWORD)
        self.page.click("button[type=submit]")
        self.page.wait_for_url(f"{url}/queue/")

    def _console(self, message: Any) -> None:
        text = message.text
        if "Content Security Policy" in text or message.type == "error":
            self.problems.append(text)

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def assert_clean(self, *expected: str) -> None:
        # The only console errors we accept are the 4xx responses a test provoked on purpose
        # (and what it names in `expected`).
        allowed = ("status of 4", *expected)
        real = [p for p in self.problems if not any(a in p for a in allowed)]
        assert real == [], real


def api_submit(url: str, world: Any, **data: Any) -> str:
    body = {"checkpoint": world.checkpoint.slug, "title": "From the API", "payload": {"n": 1}}
    body.update(data)
    response = httpx.post(
        f"{url}/api/v1/proposals/",
        json=body,
        headers={"Authorization": f"Bearer {token_for(world.submitter)}"},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_keyboard_desk_live_across_two_reviewers(world: Any, live: str, browser: Any) -> None:
    first = submit(world.submitter, world.checkpoint, title="Urgent weir", priority="critical")
    a = Watched(browser, live, world.reviewer.username)
    b = Watched(browser, live, world.reviewer2.username)
    for watched in (a, b):
        watched.page.locator("#live.on").wait_for(timeout=WAIT)
    assert a.page.locator("#live").inner_text() == "live"

    # Submitted through the API while both desks are open: it appears without a reload.
    second_id = api_submit(live, world, title="Arrived live", priority="low")
    for watched in (a, b):
        watched.page.locator(f"tr[data-proposal='{second_id}']").wait_for(timeout=WAIT)
    a.shot("queue-desk")

    # Keyboard only: the first row is selected; a, comment, Ctrl+Enter.
    assert a.page.locator("tr.selected").get_attribute("data-proposal") == str(first.pk)
    a.page.keyboard.press("?")
    a.page.locator("#keys-help").wait_for(state="visible")
    a.page.keyboard.press("Escape")
    a.page.keyboard.press("a")
    a.page.locator("#decide textarea[name=comment]").wait_for(state="visible")
    a.page.keyboard.type("checked the readings")
    a.page.keyboard.press("Control+Enter")
    a.page.locator(f"tr[data-proposal='{first.pk}']").wait_for(state="detached", timeout=WAIT)
    # The desk advanced to the next item by itself, and the other reviewer's desk updated.
    a.page.locator(f"tr.selected[data-proposal='{second_id}']").wait_for(timeout=WAIT)
    b.page.locator(f"tr[data-proposal='{first.pk}']").wait_for(state="detached", timeout=WAIT)
    first.refresh_from_db()
    assert first.status == Status.APPROVED
    assert first.votes.get().comment == "checked the readings"
    a.assert_clean()
    b.assert_clean()


def test_reject_needs_a_reason_and_edit_and_approve_shows_the_diff(
    world: Any, live: str, browser: Any
) -> None:
    proposal = submit(
        world.submitter,
        world.checkpoint,
        title="Quarterly visits",
        payload={"visits_per_year": 4, "focus": "effluent", "urgent": False},
        context={"explanation": "Rising readings.", "feature_importances": {"cr6": 0.7}},
    )
    a = Watched(browser, live, world.reviewer.username, width=390)  # a phone
    a.page.goto(f"{live}/queue/{proposal.pk}/")
    a.page.locator("#features-chart").wait_for()
    a.shot("proposal-phone")
    a.page.click("button[value=reject]")
    error = a.page.locator(".messages li.error")
    error.wait_for(timeout=WAIT)
    assert "A reason is required to reject" in error.inner_text()
    assert Proposal.objects.get(pk=proposal.pk).status == Status.PENDING

    a.page.keyboard.press("e")
    a.page.wait_for_url(f"{live}/queue/{proposal.pk}/edit/")
    a.page.fill("input[data-key=visits_per_year]", "6")
    a.page.fill("#comment", "six is the legal minimum")
    a.page.click("#preview-edit")
    changed = a.page.locator("tr.diff-changed")
    changed.wait_for(timeout=WAIT)
    assert "/visits_per_year" in changed.inner_text()
    a.shot("edit-diff")
    a.page.click("#confirm-edit")
    a.page.locator(".messages li.success").wait_for(timeout=WAIT)
    proposal.refresh_from_db()
    assert proposal.status == Status.APPROVED
    assert proposal.approved_payload == {"visits_per_year": 6, "focus": "effluent", "urgent": False}
    assert proposal.revisions.get(number=2).author == world.reviewer
    a.assert_clean()


def test_stale_revision_is_refused_and_the_new_one_reviewable(
    world: Any, live: str, browser: Any
) -> None:
    world.checkpoint.quorum_rule = "count"
    world.checkpoint.quorum_count = 2
    world.checkpoint.save()
    proposal = submit(world.submitter, world.checkpoint, payload={"cost": 100})
    a = Watched(browser, live, world.reviewer.username)
    a.page.goto(f"{live}/queue/{proposal.pk}/")
    # Meanwhile the other reviewer edits and approves through the API: revision 2.
    response = httpx.post(
        f"{live}/api/v1/proposals/{proposal.pk}/votes/",
        json={"decision": "approve", "revision": 1, "adjustments": {"cost": 80}},
        headers={"Authorization": f"Bearer {token_for(world.reviewer2)}"},
    )
    assert response.status_code == 201, response.text
    a.page.uncheck("input[name=advance]")
    a.page.click("button[value=approve]")
    banner = a.page.locator("section.stale")
    banner.wait_for(timeout=WAIT)
    assert "revision 1" in banner.inner_text() and "/cost" in banner.inner_text()
    a.shot("stale-revision")
    a.page.click("section.stale a.button")
    a.page.click("button[value=approve]")
    a.page.locator(".messages li.success").wait_for(timeout=WAIT)
    proposal.refresh_from_db()
    assert proposal.status == Status.APPROVED and proposal.approved_payload == {"cost": 80}
    a.assert_clean()


def test_options_side_by_side_and_bulk_with_one_conflict(
    world: Any, live: str, browser: Any
) -> None:
    options = [
        {"key": "monthly", "label": "Monthly", "payload": {"every": 1}, "confidence": 0.7},
        {"key": "quarterly", "label": "Quarterly", "payload": {"every": 3}, "confidence": 0.2},
    ]
    chosen = submit(world.submitter, world.checkpoint, title="Pick a cadence", options=options)
    a = Watched(browser, live, world.reviewer.username)
    a.page.goto(f"{live}/queue/{chosen.pk}/")
    assert a.page.locator(".options article").count() == 2
    assert "recommended" in a.page.locator("article[data-option=monthly]").inner_text()
    a.page.check("input[name=selected_option][value=quarterly]")
    a.page.uncheck("input[name=advance]")
    a.page.click("button[value=approve]")
    a.page.locator(".messages li.success").wait_for(timeout=WAIT)
    chosen.refresh_from_db()
    assert chosen.selected_option == "quarterly" and chosen.approved_payload == {"every": 3}

    items = [submit(world.submitter, world.checkpoint, title=f"Bulk {i}") for i in range(3)]
    a.page.goto(f"{live}/queue/")
    a.page.locator("#live.on").wait_for(timeout=WAIT)
    # Hold the live refresh back, as a slow network would: the desk still shows an item that
    # another reviewer decides meanwhile, and the bulk decision meets the 409.
    a.page.route("**/queue/?partial=1**", lambda route: route.abort())
    for item in items:
        a.page.check(f"tr[data-proposal='{item.pk}'] input[name=items]")
    httpx.post(
        f"{live}/api/v1/proposals/{items[1].pk}/votes/",
        json={"decision": "approve", "revision": 1},
        headers={"Authorization": f"Bearer {token_for(world.reviewer2)}"},
    ).raise_for_status()
    a.page.fill("#bulk-form textarea[name=comment]", "batch ok")
    a.page.click("#bulk-form button[value=approve]")
    result = a.page.locator("#bulk-result table")
    result.wait_for(timeout=WAIT)
    assert a.page.locator("#bulk-result tr.ok").count() == 2
    failed = a.page.locator(f"#bulk-result tr[data-result='{items[1].pk}']")
    assert failed.get_attribute("data-status-code") == "409"
    a.shot("bulk-result")
    assert {p.status for p in Proposal.objects.filter(pk__in=[i.pk for i in items])} == {
        Status.APPROVED
    }
    a.assert_clean("net::ERR_FAILED")  # the refreshes this test held back


def test_dashboard_charts_draw_real_data(world: Any, live: str, browser: Any) -> None:
    from tests.hitl.test_dashboard import calibration_fixture

    calibration_fixture(world)
    m = Watched(browser, live, world.manager.username)
    m.page.goto(f"{live}/dashboard/?period=24h")
    m.page.wait_for_function("window.NO_CHARTS && window.NO_CHARTS.length >= 2", timeout=WAIT)
    drawn = m.page.evaluate(
        "window.NO_CHARTS.map(c => c.data.datasets"
        ".reduce((n, d) => n + d.data.filter(v => v).length, 0))"
    )
    assert all(n > 0 for n in drawn), drawn
    assert (
        m.page.locator(f"[data-calibration='{world.checkpoint.slug}'] .suggested").inner_text()
        == "0.8"
    )
    assert m.page.locator("#kpi-submitted").inner_text() == "85"
    m.shot("dashboard")
    m.page.click("text=Apply 0.8")
    m.page.locator(".messages li.success").wait_for(timeout=WAIT)
    world.checkpoint.refresh_from_db()
    assert world.checkpoint.auto_approve_at == 0.8
    m.assert_clean()


def test_outsider_sees_nothing_live_and_gets_404(world: Any, live: str, browser: Any) -> None:
    o = Watched(browser, live, world.outsider.username)
    o.page.locator("#live.on").wait_for(timeout=WAIT)
    proposal_id = api_submit(live, world, title="Not for outsiders")
    # A reviewer's desk sees it arrive; give the outsider's the same time, then look.
    r = Watched(browser, live, world.reviewer.username)
    r.page.locator(f"tr[data-proposal='{proposal_id}']").wait_for(timeout=WAIT)
    o.page.wait_for_timeout(1500)
    assert o.page.locator("#queue-rows").inner_text().strip() == "Nothing is waiting for you."
    response = o.page.goto(f"{live}/queue/{proposal_id}/")
    assert response is not None and response.status == 404
    assert "Not for outsiders" not in o.page.content()
    headers = response.headers
    assert "script-src 'self'" in headers.get("content-security-policy", "")
    # The proposal's socket refuses the outsider during the handshake: it never opens.
    opened = o.page.evaluate(
        """id => new Promise(done => { const ws = new WebSocket(
             "ws://" + location.host + "/ws/proposals/" + id + "/");
           ws.onopen = () => done(true); ws.onclose = () => done(false); })""",
        proposal_id,
    )
    assert opened is False
    o.assert_clean("WebSocket connection to")  # the refused handshake above
    r.assert_clean()
