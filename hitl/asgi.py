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

from typing import Any

import django
from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler


class SyncStackASGIHandler(ASGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)
        # Thread-sensitive: the same thread as the request_started/finished signals, so the
        # database connection is opened and given back to the pool by the same thread.
        chain: Any = getattr(self, "_middleware_chain")  # noqa: B009  # untyped in the stubs
        self._middleware_chain = sync_to_async(chain, thread_sensitive=True)


def get_asgi_application() -> SyncStackASGIHandler:
    """django.core.asgi.get_asgi_application, with the handler above."""
    django.setup(set_prefix=False)
    return SyncStackASGIHandler()
