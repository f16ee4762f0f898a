"""Headless Chromium against a live server: the review queue updates itself when another
reviewer decides, and the proposal page votes through the same service as the API.

Real components end to end: uvicorn serving config.asgi (HTTP + websockets), a Celery worker
relaying the outbox to the Redis channel layer, PostgreSQL, and Debian's Chromium driven by
Playwright (no browser download: executable_path=/usr/bin/chromium).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.core.management import call_command

from proposals.models import Proposal, Status
from tests.factories import submit, token_for
from tests.processes import private_redis_db, start_server, start_worker, subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PASSWORD = "pw-for-tests-123"  # tests.factories.UserFactory


@pytest.fixture
def live(world: Any, tmp_path: Path) -> Iterator[str]:
    # The server runs with DEBUG off, as in production: WhiteNoise serves the collected files
    # only (the pages' scripts and styles), so collect them first, as `up` does.
    call_command("collectstatic", "--noinput", "-v", "0")
    with private_redis_db() as redis_url:
        env = subprocess_env(redis_url)
        server, url = start_server(tmp_path, env)
        worker, _ = start_worker(tmp_path, env, "--concurrency", "1")
        try:
            yield url
        finally:
            worker.stop()
            server.stop()


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are
    # still plain synchronous code, which Django would otherwise refuse next to a loop.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is not installed (apt-get install chromium); .ci/run installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            yield instance
        finally:
            instance.close()


def _log_in(browser: Any, url: str, username: str) -> Any:
    page = browser.new_context().new_page()
    page.goto(f"{url}/accounts/login/?next=/queue/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/queue/")
    return page


def test_a_decision_elsewhere_updates_the_queue_within_a_second(
    world: Any, live: str, browser: Any
) -> None:
    proposal = submit(world.submitter, world.checkpoint, title="Inspect the river weir")
    page = _log_in(browser, live, world.reviewer2.username)
    row = page.locator(f"tr[data-proposal='{proposal.pk}']")
    row.wait_for()
    page.locator("#live.on").wait_for(timeout=10_000)  # the websocket is up

    started = time.monotonic()
    response = httpx.post(
        f"{live}/api/v1/proposals/{proposal.pk}/votes/",
        json={"decision": "approve", "revision": 1},
        headers={"Authorization": f"Bearer {token_for(world.reviewer)}"},
    )
    assert response.status_code == 201, response.text
    row.wait_for(state="detached", timeout=5_000)
    elapsed = time.monotonic() - started
    print(f"queue updated {elapsed:.2f}s after the decision")
    # The product goal is "within a second" (measured: about 0.4 s); the bound leaves room
    # for a loaded 2-core CI machine so that the test catches a broken path, not a slow one.
    assert elapsed < 3.0
    assert page.locator("#queue-rows").inner_text().strip() == "Nothing is waiting for you."


def test_the_proposal_page_votes_and_shows_the_outcome(world: Any, live: str, browser: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint, payload={"frequency": 4})
    page = _log_in(browser, live, world.reviewer.username)
    page.click(f"tr[data-proposal='{proposal.pk}'] a")
    page.wait_for_url(f"{live}/queue/{proposal.pk}/")
    assert "frequency" in page.inner_text(".payload")
    page.fill("textarea[name=comment]", "looks right")
    page.click("button[value=approve]")
    page.locator(".messages .success").wait_for()
    # Nothing else waits for this reviewer: the desk advances to the (empty) queue.
    page.wait_for_url(f"{live}/queue/")
    proposal.refresh_from_db()
    assert proposal.status == Status.APPROVED
    assert Proposal.objects.get(pk=proposal.pk).votes.get().comment == "looks right"


def test_an_outsider_cannot_open_the_page(world: Any, live: str, browser: Any) -> None:
    proposal = submit(world.submitter, world.checkpoint)
    page = _log_in(browser, live, world.outsider.username)
    assert page.locator("#queue-rows").inner_text().strip() == "Nothing is waiting for you."
    response = page.goto(f"{live}/queue/{proposal.pk}/")
    assert response is not None and response.status == 404
