"""Django's ASGI handler, with the middleware stack run synchronously in one step.

Under ASGI Django builds the middleware chain for async callers: every middleware that can run
either way runs on the event loop, and Django's own middleware (MiddlewareMixin) then hands
each of its process_request/process_response calls to the request's thread and back, while a
sync-only one (WhiteNoise, ours) hands the rest of the chain back to the loop. That was a dozen
loop/thread round trips per API call, each queued behind every other request's work on the
one event loop. Our views are all synchronous, so the whole chain, view included, runs in the
request's thread in one hop, as under WSGI; the event loop keeps only the socket work.

An API-key call (`Authorization: Bearer …` to /api/v1/) goes through a second chain without
the middleware of browser sessions (settings.API_KEY_CALL_SKIPS_MIDDLEWARE): its caller is the
key (hitl.authentication authenticates it or refuses it; the session cookie is never read), and
a forged cross-site request cannot carry that header, so sessions, CSRF, the session's user and
flash messages had nothing to do but cost every call their set-up.
"""

from __future__ import annotations

import gc
from typing import Any

import django
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.base import BaseHandler
from django.http import HttpRequest, HttpResponseBase
from django.urls import get_resolver
from rest_framework.authentication import get_authorization_header

API_KEY_CALL_PREFIX = "/api/v1/"  # DRF views only: they authenticate the key themselves


def _sync_chain(handler: BaseHandler, skip: frozenset[str] = frozenset()) -> None:
    """Load `handler`'s middleware for synchronous calls, leaving out `skip`, and make the
    whole chain one call into the request's thread."""
    everything = settings.MIDDLEWARE
    # Django reads the list from the settings; start-up is single-threaded.
    settings.MIDDLEWARE = [path for path in everything if path not in skip]
    try:
        BaseHandler.load_middleware(handler, is_async=False)
    finally:
        settings.MIDDLEWARE = everything
    # Thread-sensitive: the same thread as the request_started/finished signals, so the
    # database connection is opened and given back to the pool by the same thread.
    chain: Any = getattr(handler, "_middleware_chain")  # noqa: B009  # untyped in the stubs
    setattr(handler, "_middleware_chain", sync_to_async(chain, thread_sensitive=True))  # noqa: B010


def is_api_key_call(request: HttpRequest) -> bool:
    """Whether hitl.authentication.BearerTokenAuthentication will take this call: it does
    whenever the header's first word is the scheme (it authenticates or refuses, never falls
    back to the session). The header is split as DRF splits it."""
    if not request.path_info.startswith(API_KEY_CALL_PREFIX):
        return False
    words = get_authorization_header(request).split()  # type: ignore[arg-type]
    return bool(words) and words[0].lower() == b"bearer"


class _ApiKeyCallHandler(BaseHandler):
    def __init__(self) -> None:
        _sync_chain(self, frozenset(settings.API_KEY_CALL_SKIPS_MIDDLEWARE))


class SyncStackASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        super().__init__()
        self._api_key_calls = _ApiKeyCallHandler()

    def load_middleware(self, is_async: bool = False) -> None:
        _sync_chain(self)

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        if is_api_key_call(request):
            return await self._api_key_calls.get_response_async(request)  # type: ignore[no-any-return]
        return await super().get_response_async(request)  # type: ignore[no-any-return]


# Young-generation collections run every GC_THRESHOLD_0 net allocations instead of 700: a
# list call allocates thousands of container objects that die with it, and at 700 it paid about
# one collection per request. Measured on GET /api/v1/proposals/?page_size=50 in one process
# (3 x 400 calls, time inside the collector per call): 0.74-2.61 ms with Python's defaults (the
# spikes: a full collection walking ~220,000 start-up objects), 0.56-0.73 ms frozen with this
# threshold.
GC_THRESHOLD_0 = 7000


def get_asgi_application() -> SyncStackASGIHandler:
    """django.core.asgi.get_asgi_application, with the handler above, relay kicks off the
    requests' path (notifications.kicks), every URL's view imported, and the start-up's
    objects (modules, settings, URL patterns, middleware) moved out of the collector's sight
    (gc.freeze): they live as long as the process, and each full collection walked them all."""
    django.setup(set_prefix=False)
    from notifications import kicks

    kicks.kick_in_background()
    handler = SyncStackASGIHandler()
    get_resolver().url_patterns  # noqa: B018  # imports every view now, so it is frozen too
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD_0, *gc.get_threshold()[1:])
    return handler
