"""The ASGI handler runs the whole middleware stack and the view in the request's one worker
thread (hitl.asgi): Django's own handler ran every middleware that can go both ways on the
event loop, each process_request/process_response hopping to the thread and back."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from django.http import HttpRequest

from hitl.asgi import SyncStackASGIHandler
from tests.factories import token_for

pytestmark = pytest.mark.django_db(transaction=True)

seen: list[int] = []


class RecordingMiddleware:
    """Can run either way, like Django's own middleware: records the thread it runs in."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        from asgiref.sync import iscoroutinefunction, markcoroutinefunction

        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        seen.append(threading.get_ident())
        return self.get_response(request)


def test_every_middleware_and_the_view_run_in_one_thread_off_the_event_loop(world, settings):
    settings.MIDDLEWARE = [
        "tests.hitl.test_asgi_stack.RecordingMiddleware",
        *settings.MIDDLEWARE,
        "tests.hitl.test_asgi_stack.RecordingMiddleware",
    ]
    seen.clear()
    body = json.dumps({"checkpoint": world.checkpoint.slug, "title": "t", "payload": {"a": 1}})
    authorization = f"Bearer {token_for(world.submitter)}".encode()

    async def post() -> tuple[dict[str, Any], bytes, int]:
        app = SyncStackASGIHandler()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/api/v1/proposals/",
            "raw_path": b"/api/v1/proposals/",
            "query_string": b"",
            "headers": [
                (b"host", b"testserver"),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"authorization", authorization),
                (b"x-forwarded-proto", b"https"),
            ],
            "client": ("127.0.0.1", 1234),
            "server": ("testserver", 80),
        }
        communicator = ApplicationCommunicator(app, scope)
        await communicator.send_input({"type": "http.request", "body": body.encode()})
        start = await communicator.receive_output(30)
        content = await communicator.receive_output(30)
        await communicator.wait(30)
        return start, content["body"], threading.get_ident()

    start, content, loop_thread = async_to_sync(post)()
    assert start["status"] == 201, content
    assert len(seen) == 2 and seen[0] == seen[1]
    assert loop_thread not in seen


browser_only: list[str] = []


class BrowserOnlyRecorder(RecordingMiddleware):
    """Stands for the session, CSRF, user and messages middleware: records the path it saw."""

    def __call__(self, request: HttpRequest) -> Any:
        browser_only.append(request.path)
        return self.get_response(request)


def asgi_get(path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    async def get() -> tuple[int, bytes]:
        app = SyncStackASGIHandler()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": [(b"host", b"testserver"), (b"x-forwarded-proto", b"https"), *headers],
            "client": ("127.0.0.1", 1234),
            "server": ("testserver", 80),
        }
        communicator = ApplicationCommunicator(app, scope)
        await communicator.send_input({"type": "http.request", "body": b""})
        start = await communicator.receive_output(30)
        content = await communicator.receive_output(30)
        await communicator.wait(30)
        return int(start["status"]), bytes(content["body"])

    return async_to_sync(get)()


def test_api_key_calls_skip_the_browser_middleware_and_nothing_else_does(world, settings, client):
    recorder = "tests.hitl.test_asgi_stack.BrowserOnlyRecorder"
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, recorder]
    settings.API_KEY_CALL_SKIPS_MIDDLEWARE = [*settings.API_KEY_CALL_SKIPS_MIDDLEWARE, recorder]
    browser_only.clear()
    bearer = (b"authorization", f"Bearer {token_for(world.reviewer)}".encode())
    assert asgi_get("/api/v1/proposals/", [bearer])[0] == 200
    assert asgi_get("/api/v1/proposals/", [(b"authorization", b"bearer nok_x_y")])[0] == 401
    assert browser_only == []
    client.force_login(world.reviewer)
    cookie = (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())
    assert asgi_get("/api/v1/proposals/", [cookie])[0] == 200  # the session's call: all of it
    assert asgi_get("/queue/", [cookie, bearer])[0] == 200  # a page: all of it, header or not
    assert browser_only == ["/api/v1/proposals/", "/queue/"]
