"""API keys (hashed at rest, revocable, expiring) and browser sessions with CSRF."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.utils import timezone
from rest_framework.test import APIClient

from audit.models import AuditEvent
from hitl.keys import api_key_authenticate, api_key_create, api_key_revoke
from hitl.models import ApiKey
from proposals.models import Proposal, Vote
from proposals.permissions import forget_rights
from tests.factories import submit

pytestmark = pytest.mark.django_db

LIST = "/api/v1/proposals/"
NEW = {"checkpoint": "inspection-schedule", "title": "Inspect", "payload": {"frequency": 4}}


def browser_for(user: Any) -> APIClient:
    """A browser session with CSRF enforced, logged in with a real password.
    (The factory's password is set on the instance only, so it is saved here first.)"""
    user.set_password("correct horse battery staple")
    user.save(update_fields=["password"])
    browser = APIClient(enforce_csrf_checks=True)
    assert browser.login(username=user.get_username(), password="correct horse battery staple")
    return browser


def bearer(token: str, *, enforce_csrf_checks: bool = False) -> APIClient:
    client = APIClient(enforce_csrf_checks=enforce_csrf_checks)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def assert_401(response: Any, code: str = "authentication_failed") -> None:
    assert response.status_code == 401, (response.status_code, response.content[:300])
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == code, error


# --- storage -------------------------------------------------------------------------------


def test_only_the_hash_is_stored(world):
    issued = api_key_create(user=world.submitter, name="ci")
    scheme, prefix, secret = issued.token.split("_", 2)
    assert scheme == "nok" and prefix == issued.api_key.prefix and len(secret) >= 40

    row = ApiKey.objects.filter(pk=issued.api_key.pk).values().get()
    assert row["key_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    for name, value in row.items():
        assert secret not in str(value), f"secret stored in clear in ApiKey.{name}"
        assert issued.token not in str(value), name
    assert secret not in str(issued.api_key)
    # The audit trail records the creation, never the secret.
    events = AuditEvent.objects.filter(verb="api_key.created")
    assert events.exists()
    for event in events.values():
        assert secret not in str(event)


def test_two_keys_for_one_user_are_independent(world):
    one = api_key_create(user=world.reviewer, name="laptop")
    two = api_key_create(user=world.reviewer, name="ci")
    assert one.api_key.prefix != two.api_key.prefix
    assert one.api_key.key_hash != two.api_key.key_hash
    api_key_revoke(api_key=one.api_key, revoked_by=world.manager)
    assert_401(bearer(one.token).get(LIST))
    assert bearer(two.token).get(LIST).status_code == 200


# --- what does not authenticate --------------------------------------------------------------


def test_revoked_key_is_401_immediately(world):
    issued = api_key_create(user=world.submitter, name="ci")
    client = bearer(issued.token)
    assert client.get(LIST).status_code == 200
    api_key_revoke(api_key=issued.api_key, revoked_by=world.manager)
    assert_401(client.get(LIST))
    assert_401(client.post(LIST, NEW, format="json"))
    assert Proposal.objects.count() == 0
    # Revoking twice is a no-op, recorded once.
    api_key_revoke(api_key=issued.api_key, revoked_by=world.manager)
    assert AuditEvent.objects.filter(verb="api_key.revoked").count() == 1


def test_expired_key_is_401(world):
    expired = api_key_create(
        user=world.submitter, name="old", expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert_401(bearer(expired.token).get(LIST))
    live = api_key_create(
        user=world.submitter, name="new", expires_at=timezone.now() + timedelta(hours=1)
    )
    assert bearer(live.token).get(LIST).status_code == 200


def test_key_of_an_inactive_user_is_401(world):
    issued = api_key_create(user=world.reviewer, name="laptop")
    client = bearer(issued.token)
    assert client.get(LIST).status_code == 200
    world.reviewer.is_active = False
    world.reviewer.save(update_fields=["is_active"])
    assert_401(client.get(LIST))
    world.reviewer.is_active = True
    world.reviewer.save(update_fields=["is_active"])
    assert client.get(LIST).status_code == 200


def test_wrong_secret_with_a_real_prefix_is_401(world):
    issued = api_key_create(user=world.submitter, name="ci")
    prefix = issued.api_key.prefix
    secret = issued.token.split("_", 2)[2]
    for token in (
        f"nok_{prefix}_{secret[:-1]}",
        f"nok_{prefix}_{secret}x",
        f"nok_{prefix}_",
        f"nok_{prefix}",
        f"xyz_{prefix}_{secret}",
        f"NOK_{prefix}_{secret}",
        f"nok_{prefix.upper()}_{secret}",
        secret,
    ):
        assert_401(bearer(token).get(LIST))
        assert api_key_authenticate(token) is None, token


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("Bearer", id="no-token"),
        pytest.param("Bearer ", id="empty-token"),
        pytest.param("Bearer a b", id="three-parts"),
        pytest.param("Bearer nokey", id="no-scheme"),
        pytest.param("Bearer nok__", id="empty-parts"),
        pytest.param("Bearer nok_" + "a" * 5000 + "_b", id="huge-prefix"),
        pytest.param("Bearer nok_\xff\xfe_x", id="not-utf8"),
        pytest.param("Bearer nok_abc\x00_def", id="nul"),
        pytest.param("Bearer nok_%00_def", id="percent-nul"),
        pytest.param("Bearer nok_' OR 1=1 --_x", id="sql-ish"),
    ],
)
def test_malformed_authorization_header_is_401(world, header):
    client = APIClient()
    client.raise_request_exception = False
    response = client.get(LIST, HTTP_AUTHORIZATION=header)
    assert response.status_code == 401, (response.status_code, response.content[:200])
    assert_401(response)


@pytest.mark.parametrize(
    "header",
    ["Basic dXNlcjpwYXNz", "Token nok_a_b", "Digest x", "bearerx nok_a_b", ""],
)
def test_other_schemes_are_anonymous_401(world, header):
    response = APIClient().get(LIST, HTTP_AUTHORIZATION=header)
    assert_401(response, "not_authenticated")


def test_invalid_bearer_does_not_fall_back_to_the_session(world):
    """A bad key is an error even with a valid session: no silent identity switch."""
    api = browser_for(world.reviewer)
    assert api.get(LIST).status_code == 200
    api.credentials(HTTP_AUTHORIZATION="Bearer nok_000000000000_nope")
    assert_401(api.get(LIST))


def test_bearer_wins_over_the_session(world):
    proposal = submit(world.submitter, world.checkpoint)
    api = browser_for(world.reviewer)
    token = api_key_create(user=world.reviewer2, name="x").token
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    response = api.post(
        f"{LIST}{proposal.pk}/votes/", {"decision": "approve", "revision": 1}, format="json"
    )
    assert response.status_code == 201
    assert response.json()["vote"]["reviewer"] == "raj"


# --- what does authenticate ------------------------------------------------------------------


def test_lowercase_scheme_and_extra_spaces_are_accepted(world):
    issued = api_key_create(user=world.submitter, name="ci")
    for header in (f"bearer {issued.token}", f"Bearer   {issued.token}", f"BEARER {issued.token}"):
        assert APIClient().get(LIST, HTTP_AUTHORIZATION=header).status_code == 200, header


def test_personal_key_of_a_human_works(world):
    proposal = submit(world.submitter, world.checkpoint)
    issued = api_key_create(user=world.reviewer, name="rita's laptop", created_by=world.reviewer)
    client = bearer(issued.token)
    listing = client.get(f"{LIST}?reviewable=me").json()["results"]
    assert [p["id"] for p in listing] == [str(proposal.pk)]
    response = client.post(
        f"{LIST}{proposal.pk}/votes/", {"decision": "approve", "revision": 1}, format="json"
    )
    assert response.status_code == 201, response.json()
    vote = Vote.objects.get()
    assert vote.reviewer_id == world.reviewer.pk
    assert AuditEvent.objects.filter(verb="proposal.vote_cast").get().actor_id == world.reviewer.pk


def test_use_stamps_last_used_at_at_most_once_a_minute(world):
    issued = api_key_create(user=world.submitter, name="ci")
    assert issued.api_key.last_used_at is None
    client = bearer(issued.token)
    client.get(LIST)
    first = ApiKey.objects.get(pk=issued.api_key.pk).last_used_at
    assert first is not None
    client.get(LIST)
    assert ApiKey.objects.get(pk=issued.api_key.pk).last_used_at == first
    ApiKey.objects.filter(pk=issued.api_key.pk).update(
        last_used_at=timezone.now() - timedelta(minutes=5)
    )
    forget_rights()  # the raw UPDATE stands for five minutes: the cached key expired
    client.get(LIST)
    assert ApiKey.objects.get(pk=issued.api_key.pk).last_used_at > first


def test_service_accounts_cannot_log_in_with_a_password(world, client):
    assert not world.submitter.has_usable_password()
    assert client.login(username="agent-smith", password="") is False


# --- session + CSRF --------------------------------------------------------------------------


def _csrf_token(client: APIClient) -> str:
    """The token a browser would have: the cookie set by a page that renders a form."""
    client.get("/admin/login/")
    token = client.cookies[settings.CSRF_COOKIE_NAME].value
    assert token
    return token


def test_session_get_works_and_unsafe_methods_need_csrf(world):
    proposal = submit(world.submitter, world.checkpoint)
    browser = browser_for(world.reviewer)
    url = f"{LIST}{proposal.pk}/votes/"
    vote = {"decision": "approve", "revision": 1}

    assert browser.get(LIST).status_code == 200
    assert browser.get(f"{LIST}{proposal.pk}/").status_code == 200

    response = browser.post(url, vote, format="json")
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "permission_denied"
    assert "CSRF" in error["message"]
    assert_before = Proposal.objects.get(pk=proposal.pk)
    assert assert_before.status == "pending" and Vote.objects.count() == 0

    response = browser.post(url, vote, format="json", HTTP_X_CSRFTOKEN="x" * 32)
    assert response.status_code == 403  # a token that does not match the cookie

    token = _csrf_token(browser)
    response = browser.post(url, vote, format="json", HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 201, response.json()
    assert response.json()["vote"]["reviewer"] == "rita"


@pytest.mark.parametrize("method", ["post", "delete"])
def test_session_csrf_applies_to_every_unsafe_method(world, method):
    proposal = submit(world.submitter, world.checkpoint)
    browser = browser_for(world.reviewer)
    response = getattr(browser, method)(f"{LIST}{proposal.pk}/claim/")
    assert response.status_code == 403
    assert "CSRF" in response.json()["error"]["message"]
    assert Proposal.objects.get(pk=proposal.pk).claimed_by_id is None


def test_bearer_requests_need_no_csrf(world):
    client = bearer(api_key_create(user=world.submitter, name="ci").token, enforce_csrf_checks=True)
    assert client.post(LIST, NEW, format="json").status_code == 201


def test_session_of_an_inactive_or_logged_out_user_is_401(world):
    browser = browser_for(world.reviewer)
    assert browser.get(LIST).status_code == 200
    browser.logout()
    assert_401(browser.get(LIST), "not_authenticated")

    browser = browser_for(world.reviewer)
    assert browser.get(LIST).status_code == 200
    world.reviewer.is_active = False
    world.reviewer.save(update_fields=["is_active"])
    assert_401(browser.get(LIST), "not_authenticated")
