"""Django's ASGI handler, with the middleware stack run synchronously in one step.

Under ASGI Django builds the middleware chain for async callers: every middleware that can run
either way runs on the event loop, and Django's own middleware (MiddlewareMixin) then hands
each of its process_request/process_response calls to the request's thread and back, while a
sync-only one (WhiteNoise, ours) hands the rest of the chain back to the loop. That was a dozen
loop/thread round trips per API call, each queued behind every other request's work on the
one event loop. Our views are all synchronous, so the whole chain, view included, runs in the
request's thread in one hop, as under WSGI; the event loop keeps only the socket work.
"""

from __future__ import annotations

import gc
from typing import Any

import django
from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.urls import get_resolver


class SyncStackASGIHandler(ASGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)
        # Thread-sensitive: the same thread as the request_started/finished signals, so the
        # database connection is opened and given back to the pool by the same thread.
        chain: Any = getattr(self, "_middleware_chain")  # noqa: B009  # untyped in the stubs
        self._middleware_chain = sync_to_async(chain, thread_sensitive=True)


# Young-generation collections run every GC_THRESHOLD_0 net allocations instead of 700: a
# list call allocates thousands of container objects that die with it, and at 700 it paid about
# one collection per request. Measured on GET /api/v1/proposals/?page_size=50 in one process
# (3 x 400 calls, time inside the collector per call): 0.74-2.61 ms with Python's defaults (the
# spikes: a full collection walking ~220,000 start-up objects), 0.56-0.73 ms frozen with this
# threshold.
GC_THRESHOLD_0 = 7000


def get_asgi_application() -> SyncStackASGIHandler:
    """django.core.asgi.get_asgi_application, with the handler above, every URL's view
    imported, and the start-up's objects (modules, settings, URL patterns, middleware) moved
    out of the collector's sight (gc.freeze): they live as long as the process, and each full
    collection walked all of them."""
    django.setup(set_prefix=False)
    handler = SyncStackASGIHandler()
    get_resolver().url_patterns  # noqa: B018  # imports every view now, so it is frozen too
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD_0, *gc.get_threshold()[1:])
    return handler
