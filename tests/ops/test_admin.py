"""The override-rate threshold per checkpoint is an operator's setting in the admin; the
alert's state is not editable there."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from hitl.ops.models import OverrideAlert
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin(db: None) -> Client:
    client = Client()
    client.force_login(UserFactory(username="root", is_staff=True, is_superuser=True))
    return client


def test_a_checkpoints_threshold_is_set_in_the_admin(world: Any, admin: Client) -> None:
    url = "/admin/ops/overridealert/add/"
    assert admin.get(url).status_code == 200
    refused = admin.post(url, {"checkpoint": world.checkpoint.pk, "threshold": "1.5"})
    assert refused.status_code == 200  # the form again, with the error
    assert not OverrideAlert.objects.exists()
    response = admin.post(url, {"checkpoint": world.checkpoint.pk, "threshold": "0.25"})
    assert response.status_code == 302, response.content[:2000]
    alert = OverrideAlert.objects.get(pk=world.checkpoint.pk)
    assert alert.threshold == 0.25 and alert.active is False

    change = f"/admin/ops/overridealert/{world.checkpoint.pk}/change/"
    admin.post(change, {"threshold": "0.1", "active": "on", "rate": "0.9"})
    alert.refresh_from_db()
    assert alert.threshold == 0.1
    assert (alert.active, alert.rate) == (False, None)  # state is the evaluation's alone
    assert admin.get("/admin/ops/overridealert/").status_code == 200
