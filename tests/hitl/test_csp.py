"""The Content-Security-Policy goes on every document (pages, error pages, redirects) and is
left off JSON, which a browser never renders (hitl.csp)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from tests.factories import token_for

pytestmark = pytest.mark.django_db


def test_documents_get_the_policy_json_does_not(world: Any) -> None:
    browser = Client()
    browser.force_login(world.reviewer)
    for path in ("/queue/", "/queue/not-a-proposal/", "/no-such-page/", "/"):
        response = browser.get(path)
        assert not response["Content-Type"].startswith("application/json"), path
        assert "default-src 'self'" in response["Content-Security-Policy"], path
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token_for(world.reviewer)}")
    for path in ("/api/v1/proposals/", "/api/v1/proposals/not-a-uuid/"):
        answer = api.get(path)
        assert answer["Content-Type"] == "application/json", path
        assert "Content-Security-Policy" not in answer, path
        assert answer["X-Content-Type-Options"] == "nosniff", path
