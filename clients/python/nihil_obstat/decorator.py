"""`@require_approval`: a function that runs only once humans approve its arguments.

    @require_approval(checkpoint="data-purchase")
    def buy_leads(cost: int, businesses: int) -> str: ...

A call submits the bound arguments as the proposal's payload, waits for the decision, then
calls the function with the approved arguments: a reviewer's edit reaches the function. A
rejection, change request, timeout or cancel raises instead (see `nihil_obstat.errors`).

The `Idempotency-Key` is derived from the checkpoint, the function and its arguments (and
`run_id`): a restarted process repeating the call finds the proposal it already made. That
also means two calls with equal arguments are one approval; give each logical run its own
`run_id` when the same call may legitimately happen twice.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

from nihil_obstat.client import AsyncClient, Client, outcome
from nihil_obstat.keys import jsonable

F = TypeVar("F", bound=Callable[..., Any])
RunId = str | Callable[[], str | None] | None


def bind(signature: inspect.Signature, args: Any, kwargs: Any) -> dict[str, Any]:
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def call_with_payload(
    func: Callable[..., Any],
    signature: inspect.Signature,
    payload: Mapping[str, Any],
    original: Mapping[str, Any],
) -> Any:
    """Call `func` with the arguments named in `payload`. A value that was a pydantic model
    in the original call (or is annotated as one) is parsed back into that model."""
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # annotations naming local classes cannot be resolved: fine
        hints = {}
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for name, param in signature.parameters.items():
        if name not in payload:
            continue
        value = payload[name]
        model = type(original[name]) if name in original else hints.get(name)
        validate = getattr(model, "model_validate", None) or getattr(
            hints.get(name), "model_validate", None
        )
        if callable(validate) and isinstance(value, dict):
            value = validate(value)
        if param.kind is param.POSITIONAL_ONLY:
            args.append(value)
        elif param.kind is param.VAR_POSITIONAL:
            args.extend(value)
        elif param.kind is param.VAR_KEYWORD:
            kwargs.update(value)
        else:
            kwargs[name] = value
    return func(*args, **kwargs)


def require_approval(
    client: Client | AsyncClient | None = None,
    *,
    checkpoint: str,
    title: str | None = None,
    run_id: RunId = None,
    timeout: float | None = None,
    **fields: Any,
) -> Callable[[F], F]:
    """Decorate a sync or async function. `client` defaults to one built from
    NIHIL_OBSTAT_URL / NIHIL_OBSTAT_TOKEN at the first call; `fields` are `submit`'s
    optional fields (summary, confidence, context, priority, timeout_seconds, ...)."""

    def decorate(func: F) -> F:
        signature = inspect.signature(func)
        action = f"{func.__module__}.{func.__qualname__}"
        label = title or func.__name__.replace("_", " ").capitalize()

        def current_run_id() -> str | None:
            return run_id() if callable(run_id) else run_id

        if inspect.iscoroutinefunction(func):
            holder: list[Client | AsyncClient] = [client] if client is not None else []

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                if not holder:
                    holder.append(AsyncClient())
                api = holder[0]
                original = bind(signature, args, kwargs)
                payload = jsonable(original)
                options = dict(action=action, run_id=current_run_id(), **fields)
                if isinstance(api, AsyncClient):
                    proposal = await api.request_approval(
                        checkpoint, label, payload, timeout=timeout, **options
                    )
                else:  # a sync client is fine too: its waiting runs off the event loop
                    proposal = await asyncio.to_thread(
                        api.request_approval,
                        checkpoint,
                        label,
                        payload,
                        timeout=timeout,
                        **options,
                    )
                outcome(proposal)
                approved = proposal.approved_payload or {}
                return await call_with_payload(func, signature, approved, original)

            return cast(F, async_wrapper)

        sync_holder: list[Client] = []
        if client is not None:
            if not isinstance(client, Client):
                raise TypeError("a sync function needs a Client, not an AsyncClient")
            sync_holder.append(client)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not sync_holder:
                sync_holder.append(Client())
            original = bind(signature, args, kwargs)
            payload = jsonable(original)
            proposal = sync_holder[0].request_approval(
                checkpoint,
                label,
                payload,
                timeout=timeout,
                action=action,
                run_id=current_run_id(),
                **fields,
            )
            approved = proposal.approved_payload or {}
            return call_with_payload(func, signature, approved, original)

        return cast(F, wrapper)

    return decorate
