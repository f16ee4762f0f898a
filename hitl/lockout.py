"""django-axes' backend, for logins that come with a request.

Axes refuses `authenticate()` calls without a request; those never come from a login form
(Django's test client, scripts), so there is nothing to count and nothing to lock: the next
backend decides as before. Every web login (our form, the admin's) passes its request."""

from __future__ import annotations

from typing import Any

from axes.backends import AxesStandaloneBackend
from django.http import HttpRequest


class AxesBackend(AxesStandaloneBackend):
    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> Any:
        if request is None:
            return None
        return super().authenticate(request, username, password, **kwargs)
