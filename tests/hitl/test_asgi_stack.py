"""The ASGI handler runs the whole middleware stack and the view in the request's one worker
thread (hitl.asgi): Django's own handler ran every middleware that can go both ways on the
event loop, each process_request/process_response hopping to the thread and back."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from django.http import HttpRequest

from hitl.asgi import RequestThreads, SyncStackASGIHandler
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


def test_requests_reuse_threads_and_each_gives_its_connection_back(world, settings):
    """Two requests one after the other run in the same lent thread (Django's handler started
    a new one for each), and each closes its database connection in that thread, as a request
    of its own thread did."""
    settings.MIDDLEWARE = ["tests.hitl.test_asgi_stack.RecordingMiddleware", *settings.MIDDLEWARE]
    seen.clear()
    bearer = (b"authorization", f"Bearer {token_for(world.reviewer)}".encode())
    from django.db import connections

    still_open: list[bool] = []

    def closed_after_request(**_: Any) -> None:
        still_open.append(connections["default"].connection is not None)

    from django.core.signals import request_finished

    request_finished.connect(closed_after_request)  # runs after Django's close_old_connections
    try:

        async def two() -> tuple[int, int, int]:
            app = SyncStackASGIHandler()
            first = await _asgi_get_on(app, "/api/v1/proposals/", [bearer])
            await asyncio.sleep(0.05)  # the executor is taken back once it has drained
            second = await _asgi_get_on(app, "/api/v1/proposals/", [bearer])
            return first, second, app.request_threads.idle

        first, second, idle = async_to_sync(two)()
    finally:
        request_finished.disconnect(closed_after_request)
    assert (first, second) == (200, 200)
    assert len(seen) == 2 and seen[0] == seen[1]
    assert idle == 1
    assert still_open == [False, False]


def test_a_thread_still_running_an_abandoned_view_is_not_lent_again():
    threads = RequestThreads()
    executor = threads.lend()
    release = threading.Event()
    executor.submit(release.wait)  # a view whose client went away, still running
    threads.take_back(executor)
    assert threads.idle == 0
    other = threads.lend()
    assert other is not executor
    release.set()
    executor.submit(lambda: None).result(5)
    deadline = time.monotonic() + 5
    while threads.idle == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threads.idle == 1
    assert threads.lend() is executor
    other.shutdown()
    executor.shutdown()


async def _asgi_get_on(app: SyncStackASGIHandler, path: str, headers: list[Any]) -> int:
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
    await communicator.receive_output(30)
    await communicator.wait(30)
    return int(start["status"])
