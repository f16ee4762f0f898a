"""`Client` and `AsyncClient`: the REST API with the waiting, retrying and decoding done.

The human's wait is never one HTTP request: `wait` long-polls
`GET /proposals/{id}/wait/?timeout=N` in a loop (N at most `poll_seconds`), so proxies and
read timeouts see short requests, and a dropped connection costs one poll, not the wait.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from nihil_obstat.errors import (
    APIError,
    Cancelled,
    ChangesRequested,
    NihilObstatError,
    Rejected,
    TimedOut,
    WaitTimeout,
)
from nihil_obstat.keys import canonical_json, idempotency_key, jsonable
from nihil_obstat.models import Checkpoint, Event, Proposal, PydanticModel

__all__ = ["AsyncClient", "Client", "RetryPolicy", "outcome"]

URL_ENV = "NIHIL_OBSTAT_URL"
TOKEN_ENV = "NIHIL_OBSTAT_TOKEN"  # noqa: S105 - a variable name
API_PREFIX = "/api/v1"
SERVER_WAIT_MAX = 60.0  # the server's default HITL_WAIT_MAX_SECONDS


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: attempt n sleeps uniform(0, min(cap, base·2ⁿ)),
    so many agents retrying after one outage spread out instead of arriving together."""

    attempts: int = 6  # tries in all, the first included
    base: float = 0.5
    cap: float = 15.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap, self.base * 2**attempt))


# Sent again without a second thought: reads, and writes the server deduplicates.
_SAFE = "safe"
# Sent again only when the first try surely never reached the server.
_UNSAFE = "unsafe"


def _retryable(exc: BaseException | None, response: httpx.Response | None, kind: str) -> bool:
    if exc is not None:
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
            return True  # nothing was sent
        return kind == _SAFE and isinstance(exc, httpx.TransportError)
    assert response is not None
    if kind != _SAFE:
        return False
    if response.status_code >= 500 or response.status_code == 429:
        return True
    # The first try of this very key is still running on the server (its response was
    # lost): ask again until it finishes, then the stored response is replayed.
    return response.status_code == 409 and _error_code(response) == "idempotency_in_flight"


def _error_code(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return ""


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        body = response.json()
        error = body["error"]
        raise APIError(
            response.status_code,
            error.get("code", ""),
            error.get("message", ""),
            error.get("details"),
            body,
        )
    except (ValueError, KeyError, TypeError):
        raise APIError(response.status_code, "http_error", response.text[:500]) from None


def _retry_after(response: httpx.Response | None) -> float | None:
    if response is None:
        return None
    try:
        return min(60.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None


def outcome(proposal: Proposal, reviser: Any = None) -> Proposal:
    """The approved proposal, or the decision as an exception."""
    if proposal.status == "approved":
        return proposal
    if proposal.status == "rejected":
        if proposal.resolution == "timeout":
            raise TimedOut(proposal)
        raise Rejected(proposal)
    if proposal.status == "changes_requested":
        raise ChangesRequested(proposal, reviser)
    if proposal.status == "cancelled":
        raise Cancelled(proposal)
    raise WaitTimeout(proposal)


class _Base:
    """What both clients share: configuration, request bodies, decoding."""

    def __init__(
        self,
        base_url: str | None,
        token: str | None,
        *,
        timeout: float,
        retry: RetryPolicy | None,
        poll_seconds: float,
    ) -> None:
        base_url = base_url or os.environ.get(URL_ENV)
        token = token or os.environ.get(TOKEN_ENV)
        if not base_url or not token:
            raise NihilObstatError(f"give base_url and token, or set {URL_ENV} and {TOKEN_ENV}")
        base_url = base_url.rstrip("/")
        if not base_url.endswith(API_PREFIX):
            base_url += API_PREFIX
        self.base_url = base_url
        self.token = token
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.poll_seconds = max(1.0, min(poll_seconds, SERVER_WAIT_MAX))

    @property
    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}

    @staticmethod
    def submit_body(
        checkpoint: str,
        title: str,
        payload: Mapping[str, Any],
        *,
        model: type[PydanticModel] | None = None,
        payload_schema: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"checkpoint": checkpoint, "title": title, "payload": payload}
        body.update({k: v for k, v in fields.items() if v is not None})
        if payload_schema is None and model is not None:
            payload_schema = model.model_json_schema()
        if payload_schema is not None:
            body["payload_schema"] = payload_schema
        return jsonable(body)  # type: ignore[no-any-return]

    @staticmethod
    def key_for(body: Mapping[str, Any], action: str | None, run_id: str | None) -> str:
        return idempotency_key(body["checkpoint"], action or body["title"], body["payload"], run_id)

    def _wait_request_timeout(self, poll: float) -> httpx.Timeout:
        # The read must outlast the server's long-poll; connecting stays quick to fail.
        return httpx.Timeout(self.timeout, read=poll + self.timeout)

    @staticmethod
    def _poll_for(deadline: float | None, poll: float) -> float:
        if deadline is None:
            return poll
        return max(0.0, min(poll, deadline - time.monotonic()))

    @staticmethod
    def _bulk_results(data: dict[str, Any]) -> list[Proposal | APIError]:
        results: list[Proposal | APIError] = []
        for item in data["results"]:
            if item["status"] == 201:
                results.append(Proposal.from_api(item["proposal"]))
            else:
                error = item.get("error") or {}
                results.append(
                    APIError(
                        item["status"],
                        error.get("code", ""),
                        error.get("message", ""),
                        error.get("details"),
                        item,
                    )
                )
        return results


class Client(_Base):
    """Synchronous client. `Client()` reads NIHIL_OBSTAT_URL and NIHIL_OBSTAT_TOKEN."""

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        poll_seconds: float = 25.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, token, timeout=timeout, retry=retry, poll_seconds=poll_seconds)
        self._http = httpx.Client(
            headers=self._headers, timeout=timeout, transport=transport, follow_redirects=False
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(
        self,
        method: str,
        path: str,
        *,
        kind: str = _SAFE,
        json: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> httpx.Response:
        attempt = 0
        while True:
            exc: BaseException | None = None
            response: httpx.Response | None = None
            try:
                response = self._http.request(
                    method,
                    self.base_url + path,
                    json=json,
                    headers=headers,
                    params=params,
                    timeout=timeout if timeout is not None else self.timeout,
                )
            except httpx.TransportError as error:
                exc = error
            attempt += 1
            if attempt >= self.retry.attempts or not _retryable(exc, response, kind):
                if exc is not None:
                    raise exc
                assert response is not None
                _raise_for(response)
                return response
            time.sleep(_retry_after(response) or self.retry.delay(attempt - 1))

    # --- proposals -------------------------------------------------------------------------

    def submit(
        self,
        checkpoint: str,
        title: str,
        payload: Mapping[str, Any],
        *,
        action: str | None = None,
        run_id: str | None = None,
        idempotency_key: str | None = None,
        model: type[PydanticModel] | None = None,
        **fields: Any,
    ) -> Proposal:
        """Submit a proposal; `fields` are the API's optional fields (summary, options,
        context, confidence, priority, impact, region, labels, external_id, callback_url,
        timeout_seconds, payload_schema). The `Idempotency-Key` defaults to a hash of
        (checkpoint, action or title, payload, run_id): asking twice finds the first."""
        body = self.submit_body(checkpoint, title, payload, model=model, **fields)
        key = idempotency_key or self.key_for(body, action, run_id)
        response = self._request("POST", "/proposals/", json=body, headers={"Idempotency-Key": key})
        if response.headers.get("idempotent-replayed"):
            # The replay is the first response, as it was then: read what is true now.
            return self.get(response.json()["id"])
        return Proposal.from_api(response.json())

    def submit_many(
        self, proposals: Iterable[Mapping[str, Any]], *, idempotency_key: str | None = None
    ) -> list[Proposal | APIError]:
        """Up to 500 proposals (dicts of `submit`'s arguments) in one request; each gets
        its own result, a `Proposal` or the `APIError` it would have had alone."""
        items = [self.submit_body(**dict(p)) for p in proposals]
        key = idempotency_key or idempotency_key_for_bulk(items)
        response = self._request(
            "POST",
            "/proposals/bulk/",
            json={"proposals": items},
            headers={"Idempotency-Key": key},
        )
        return self._bulk_results(response.json())

    def get(self, proposal_id: str) -> Proposal:
        return Proposal.from_api(self._request("GET", f"/proposals/{proposal_id}/").json())

    def wait(self, proposal_id: str, timeout: float | None = None) -> Proposal:
        """Wait until the proposal leaves `pending` (decided, or changes requested), or
        `timeout` seconds pass (None: as long as it takes); returns it either way."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            poll = self._poll_for(deadline, self.poll_seconds)
            response = self._request(
                "GET",
                f"/proposals/{proposal_id}/wait/",
                params={"timeout": f"{poll:.1f}"},
                timeout=self._wait_request_timeout(poll),
            )
            proposal = Proposal.from_api(response.json())
            if proposal.status != "pending":
                return proposal
            if deadline is not None and time.monotonic() >= deadline:
                return proposal

    def decision(self, proposal_id: str, timeout: float | None = None) -> Proposal:
        """`wait`, then the approved proposal, or `Rejected` / `ChangesRequested` /
        `TimedOut` / `Cancelled` / `WaitTimeout`."""
        return outcome(self.wait(proposal_id, timeout), self)

    def request_approval(
        self,
        checkpoint: str,
        title: str,
        payload: Mapping[str, Any],
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> Proposal:
        """Submit and wait for the decision in one call (see `submit`, `decision`)."""
        proposal = self.submit(checkpoint, title, payload, **fields)
        if proposal.status != "pending":
            return outcome(proposal, self)
        return self.decision(proposal.id, timeout)

    def revise(
        self,
        proposal_id: str,
        payload: Mapping[str, Any],
        *,
        summary: str = "",
        comment: str = "",
    ) -> Proposal:
        response = self._request(
            "POST",
            f"/proposals/{proposal_id}/revisions/",
            kind=_UNSAFE,
            json=jsonable({"payload": payload, "summary": summary, "comment": comment}),
        )
        return Proposal.from_api(response.json())

    def cancel(self, proposal_id: str, reason: str = "") -> Proposal:
        response = self._request(
            "POST", f"/proposals/{proposal_id}/cancel/", kind=_UNSAFE, json={"reason": reason}
        )
        return Proposal.from_api(response.json())

    def events(self, proposal_id: str) -> list[Event]:
        data = self._request("GET", f"/proposals/{proposal_id}/events/").json()
        return [Event.from_api(e) for e in data["results"]]

    def checkpoints(self) -> list[Checkpoint]:
        data = self._request("GET", "/checkpoints/").json()
        return [Checkpoint.from_api(c) for c in data["results"]]


class AsyncClient(_Base):
    """The same API for asyncio code."""

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        poll_seconds: float = 25.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, token, timeout=timeout, retry=retry, poll_seconds=poll_seconds)
        self._http = httpx.AsyncClient(
            headers=self._headers, timeout=timeout, transport=transport, follow_redirects=False
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        kind: str = _SAFE,
        json: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> httpx.Response:
        attempt = 0
        while True:
            exc: BaseException | None = None
            response: httpx.Response | None = None
            try:
                response = await self._http.request(
                    method,
                    self.base_url + path,
                    json=json,
                    headers=headers,
                    params=params,
                    timeout=timeout if timeout is not None else self.timeout,
                )
            except httpx.TransportError as error:
                exc = error
            attempt += 1
            if attempt >= self.retry.attempts or not _retryable(exc, response, kind):
                if exc is not None:
                    raise exc
                assert response is not None
                _raise_for(response)
                return response
            await asyncio.sleep(_retry_after(response) or self.retry.delay(attempt - 1))

    async def submit(
        self,
        checkpoint: str,
        title: str,
        payload: Mapping[str, Any],
        *,
        action: str | None = None,
        run_id: str | None = None,
        idempotency_key: str | None = None,
        model: type[PydanticModel] | None = None,
        **fields: Any,
    ) -> Proposal:
        body = self.submit_body(checkpoint, title, payload, model=model, **fields)
        key = idempotency_key or self.key_for(body, action, run_id)
        response = await self._request(
            "POST", "/proposals/", json=body, headers={"Idempotency-Key": key}
        )
        if response.headers.get("idempotent-replayed"):
            return await self.get(response.json()["id"])
        return Proposal.from_api(response.json())

    async def submit_many(
        self, proposals: Iterable[Mapping[str, Any]], *, idempotency_key: str | None = None
    ) -> list[Proposal | APIError]:
        items = [self.submit_body(**dict(p)) for p in proposals]
        key = idempotency_key or idempotency_key_for_bulk(items)
        response = await self._request(
            "POST",
            "/proposals/bulk/",
            json={"proposals": items},
            headers={"Idempotency-Key": key},
        )
        return self._bulk_results(response.json())

    async def get(self, proposal_id: str) -> Proposal:
        response = await self._request("GET", f"/proposals/{proposal_id}/")
        return Proposal.from_api(response.json())

    async def wait(self, proposal_id: str, timeout: float | None = None) -> Proposal:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            poll = self._poll_for(deadline, self.poll_seconds)
            response = await self._request(
                "GET",
                f"/proposals/{proposal_id}/wait/",
                params={"timeout": f"{poll:.1f}"},
                timeout=self._wait_request_timeout(poll),
            )
            proposal = Proposal.from_api(response.json())
            if proposal.status != "pending":
                return proposal
            if deadline is not None and time.monotonic() >= deadline:
                return proposal

    async def decision(self, proposal_id: str, timeout: float | None = None) -> Proposal:
        return outcome(await self.wait(proposal_id, timeout), self)

    async def request_approval(
        self,
        checkpoint: str,
        title: str,
        payload: Mapping[str, Any],
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> Proposal:
        proposal = await self.submit(checkpoint, title, payload, **fields)
        if proposal.status != "pending":
            return outcome(proposal, self)
        return await self.decision(proposal.id, timeout)

    async def revise(
        self,
        proposal_id: str,
        payload: Mapping[str, Any],
        *,
        summary: str = "",
        comment: str = "",
    ) -> Proposal:
        response = await self._request(
            "POST",
            f"/proposals/{proposal_id}/revisions/",
            kind=_UNSAFE,
            json=jsonable({"payload": payload, "summary": summary, "comment": comment}),
        )
        return Proposal.from_api(response.json())

    async def cancel(self, proposal_id: str, reason: str = "") -> Proposal:
        response = await self._request(
            "POST", f"/proposals/{proposal_id}/cancel/", kind=_UNSAFE, json={"reason": reason}
        )
        return Proposal.from_api(response.json())

    async def events(self, proposal_id: str) -> list[Event]:
        data = (await self._request("GET", f"/proposals/{proposal_id}/events/")).json()
        return [Event.from_api(e) for e in data["results"]]

    async def checkpoints(self) -> list[Checkpoint]:
        data = (await self._request("GET", "/checkpoints/")).json()
        return [Checkpoint.from_api(c) for c in data["results"]]


def idempotency_key_for_bulk(items: list[dict[str, Any]]) -> str:
    return idempotency_key("*bulk*", "submit_many", canonical_json(items))
