"""Standard Webhooks delivery: planning, signing, sending, retrying.

A delivery is claimed with a short lease (`next_attempt_at` pushed forward under
`SELECT … FOR UPDATE SKIP LOCKED`) before the HTTP call, so two workers never send the same
attempt, and a worker that dies mid-call only delays it until the lease runs out. Retries wait
in the database (`next_attempt_at`), not in the broker, so no countdown ever outlives the Redis
visibility timeout.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import random
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.utils import timezone
from standardwebhooks import Webhook

from hitl.ops import metrics as ops_metrics
from notifications.crypto import encrypt, new_webhook_secret
from notifications.models import (
    DeliveryAttempt,
    DeliveryStatus,
    OutboxEvent,
    WebhookDelivery,
    WebhookEndpoint,
)

logger = logging.getLogger(__name__)

# Seconds to wait after attempt n (1-based) fails: about three days (272,555 s) over 15
# attempts, then give up (HITL_WEBHOOK_MAX_ATTEMPTS).
BACKOFF_SECONDS = (
    5,
    30,
    120,
    600,
    1800,
    3600,
    7200,
    14400,
    28800,
    43200,
    43200,
    43200,
    43200,
    43200,
)
LEASE_SECONDS = 60


MAX_URL_LENGTH = 500  # the url columns' max_length


class UnsafeTarget(ValueError):
    pass


def _allowed_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(n, strict=False) for n in settings.HITL_WEBHOOK_ALLOWED_NETWORKS]


def _refusal(host: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why this address may not be a webhook target, or None. Only globally routable unicast
    addresses pass: `is_global` also excludes carrier-grade NAT (100.64.0.0/10), benchmarking,
    documentation and the other special-purpose ranges a deny-list forgets."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is loopback
    if address.is_global and not address.is_multicast:
        return None
    if any(address in network for network in _allowed_networks()):
        return None
    return (
        f"{host} resolves to {address}, a non-public address; "
        "allow it with HITL_WEBHOOK_ALLOWED_NETWORKS."
    )


def validate_webhook_url(url: Any) -> str:
    """The one syntax check for every URL we will POST to (webhook endpoints from the API and
    the admin, proposal callback_url): an absolute http(s) URL with a host, a valid port, no
    credentials, and, when the host is an IP literal, a public one. Raises UnsafeTarget."""
    if not isinstance(url, str) or not url:
        raise UnsafeTarget("Webhook URLs must be absolute http(s) URLs.")
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeTarget(f"Webhook URLs are at most {MAX_URL_LENGTH} characters.")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise UnsafeTarget("Webhook URLs cannot contain spaces or control characters.")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises for 99999, "x", ...
        hostname = parts.hostname
    except ValueError as exc:
        raise UnsafeTarget(f"Not a valid URL: {exc}.") from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise UnsafeTarget("Webhook URLs must be absolute http(s) URLs.")
    if port == 0:
        raise UnsafeTarget("Not a valid URL: port 0.")
    if parts.username is not None or parts.password is not None:
        raise UnsafeTarget("Webhook URLs cannot carry credentials; receivers verify signatures.")
    try:
        httpx.URL(url)  # what delivery will parse: refuse here what it would refuse there
    except (httpx.InvalidURL, ValueError) as exc:
        raise UnsafeTarget(f"Not a valid URL: {exc}.") from None
    try:
        literal = ipaddress.ip_address(hostname)
    except ValueError:
        return url
    refusal = _refusal(hostname, literal)
    if refusal is not None:
        raise UnsafeTarget(refusal)
    return url


def webhook_url_validator(value: Any) -> None:
    """validate_webhook_url as a Django validator, for model/DRF/form fields: its refusal
    becomes the field's error (a 400 with details in the API)."""
    try:
        validate_webhook_url(value)
    except UnsafeTarget as exc:
        raise DjangoValidationError(str(exc), code="invalid_url") from None


@dataclass(frozen=True)
class PinnedTarget:
    """A URL and the addresses it was checked against: delivery connects there and only
    there, so a resolver that answers differently the second time (DNS rebinding) is not
    asked a second time."""

    url: str
    addresses: tuple[str, ...]  # every one allowed, in the resolver's order of preference

    def request_url(self, address: str) -> httpx.URL:
        return httpx.URL(self.url).copy_with(host=address)

    def host_header(self) -> str:
        return httpx.URL(self.url).netloc.decode("ascii")

    def extensions(self) -> dict[str, Any]:
        parsed = httpx.URL(self.url)
        host = parsed.raw_host.decode("ascii")
        if parsed.scheme != "https" or host in self.addresses:  # an IP literal: no SNI
            return {}
        # TLS: send the name as SNI and verify the certificate against it, not the address.
        return {"sni_hostname": host}


def resolve_target(url: str) -> PinnedTarget:
    """Validate, resolve, and refuse unless every address the name has is allowed (loopback,
    private, link-local, CGNAT, ... are refused unless HITL_WEBHOOK_ALLOWED_NETWORKS allows
    them). Checked at registration and again before every attempt (DNS can change); the
    attempt then connects to the address returned here."""
    validate_webhook_url(url)
    parsed = httpx.URL(url)
    host = parsed.raw_host.decode("ascii")  # IDNA: what DNS and SNI see
    try:
        infos = socket.getaddrinfo(
            host,
            parsed.port or (443 if parsed.scheme == "https" else 80),
            type=socket.SOCK_STREAM,
            proto=socket.IPPROTO_TCP,
        )
    except (OSError, UnicodeError) as exc:
        raise UnsafeTarget(f"Cannot resolve {host}: {exc}") from None
    addresses = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        refusal = _refusal(host, address)
        if refusal is not None:
            raise UnsafeTarget(refusal)
        addresses.append(str(address))
    if not addresses:
        raise UnsafeTarget(f"Cannot resolve {host}: no address")
    return PinnedTarget(url=url, addresses=tuple(dict.fromkeys(addresses)))


def check_target(url: str) -> None:
    resolve_target(url)


@dataclass(frozen=True)
class CreatedEndpoint:
    endpoint: WebhookEndpoint
    secret: str  # shown once to whoever registered it


def endpoint_create(
    *,
    name: str,
    url: str,
    events: list[str] | None = None,
    checkpoint: Any = None,
    created_by: Any = None,
) -> CreatedEndpoint:
    check_target(url)
    secret = new_webhook_secret()
    endpoint = WebhookEndpoint.objects.create(
        name=name,
        url=url,
        secret_encrypted=encrypt(secret),
        events=events or [],
        checkpoint=checkpoint,
        created_by=created_by,
    )
    return CreatedEndpoint(endpoint, secret)


# --- planning (called by the relay, inside its transaction) ---------------------------------


def active_endpoints(alias: str = DEFAULT_DB_ALIAS) -> list[WebhookEndpoint]:
    """`WebhookEndpoint.objects.filter(active=True)`, with the query compiled once per process:
    compiling it anew cost a small relay run as much as its claim did. Rows are converted as
    the ORM converts them (the compiler's converters: JSON decoded, and SQLite's types)."""
    sql, params, converters = _active_endpoints_query(alias)
    connection = connections[alias]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    endpoints = []
    for row in rows:
        values = list(row)
        for index, functions, expression in converters:
            for convert in functions:
                values[index] = convert(values[index], expression, connection)
        endpoints.append(WebhookEndpoint.from_db(alias, _ENDPOINT_FIELDS, values))
    return endpoints


_ENDPOINT_FIELDS = [field.attname for field in WebhookEndpoint._meta.concrete_fields]


@functools.cache
def _active_endpoints_query(alias: str) -> tuple[str, Any, list[tuple[int, list[Any], Any]]]:
    compiler = WebhookEndpoint.objects.filter(active=True).query.get_compiler(alias)
    sql, params = compiler.as_sql()
    columns = [column for column, _, _ in compiler.select]
    assert len(columns) == len(_ENDPOINT_FIELDS)  # every field, in from_db's order
    converters = compiler.get_converters(columns)
    return sql, params, [(index, *converter) for index, converter in converters.items()]


def plan_deliveries(
    events: list[OutboxEvent], endpoints: list[WebhookEndpoint]
) -> list[WebhookDelivery]:
    """For each event, one delivery per interested endpoint plus its proposal's callback_url,
    written in one INSERT. Idempotent: targets an earlier run of the relay already planned
    (it crashed before marking its events) are read in one query and skipped, and the unique
    constraints hold the line against any other planner."""
    now = timezone.now()
    wanted: dict[tuple[Any, str, Any], WebhookDelivery] = {}
    for event in events:
        for endpoint in endpoints:
            if endpoint.wants(event.topic, event.checkpoint_id):
                wanted[(event.pk, "endpoint", endpoint.pk)] = WebhookDelivery(
                    event=event,
                    endpoint=endpoint,
                    url=endpoint.url,
                    next_attempt_at=now,
                    created_at=now,
                )
        proposal = event.proposal
        if proposal is not None and proposal.callback_url:
            wanted.setdefault(
                (event.pk, "url", proposal.callback_url),
                WebhookDelivery(
                    event=event, url=proposal.callback_url, next_attempt_at=now, created_at=now
                ),
            )
    if not wanted:
        return []
    for event_id, endpoint_id, url in WebhookDelivery.objects.filter(
        event__in={key[0] for key in wanted}
    ).values_list("event_id", "endpoint_id", "url"):
        if endpoint_id is not None:
            wanted.pop((event_id, "endpoint", endpoint_id), None)
        else:
            wanted.pop((event_id, "url", url), None)
    return WebhookDelivery.objects.bulk_create(list(wanted.values()), ignore_conflicts=True)


# --- sending ------------------------------------------------------------------------------


def message_body(event: OutboxEvent) -> str:
    return json.dumps(
        {"type": event.topic, "timestamp": event.created_at.isoformat(), "data": event.payload},
        sort_keys=True,
        separators=(",", ":"),
    )


def _signing_secret(delivery: WebhookDelivery) -> str | None:
    if delivery.endpoint is not None:
        return delivery.endpoint.secret
    proposal = delivery.event.proposal
    account = getattr(proposal.submitted_by, "service_account", None) if proposal else None
    if account is None or not account.signing_secret_encrypted:
        return None
    return str(account.signing_secret)


def signed_headers(msg_id: str, secret: str, body: str, at: datetime) -> dict[str, str]:
    signature = Webhook(secret).sign(msg_id, at, body)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
        "user-agent": "NihilObstat-Webhooks/1",
    }


def _claim(delivery_id: Any) -> WebhookDelivery | None:
    """Take the attempt: due, pending and not being sent by anyone else."""
    now = timezone.now()
    with transaction.atomic():
        delivery = (
            WebhookDelivery.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("endpoint", "event__proposal__submitted_by__service_account")
            .filter(pk=delivery_id, status=DeliveryStatus.PENDING, next_attempt_at__lte=now)
            .first()
        )
        if delivery is None:
            return None
        if delivery.endpoint is not None and not delivery.endpoint.active:
            delivery.status = DeliveryStatus.CANCELLED
            delivery.last_error = "endpoint disabled"
            delivery.save(update_fields=["status", "last_error"])
            return None
        if (
            delivery.attempts >= settings.HITL_WEBHOOK_MAX_ATTEMPTS
            and not DeliveryAttempt.objects.filter(
                delivery=delivery, number=delivery.attempts
            ).exists()
        ):
            # The last attempt left no record (its worker died mid-call): stop rather than
            # lease it forever. (An admin redeliver after a recorded last attempt still runs.)
            delivery.status = DeliveryStatus.FAILED
            delivery.last_error = (
                delivery.last_error or f"gave up after {delivery.attempts} attempts"
            )
            delivery.save(update_fields=["status", "last_error"])
            return None
        delivery.attempts += 1
        delivery.next_attempt_at = now + timedelta(seconds=LEASE_SECONDS)
        delivery.save(update_fields=["attempts", "next_attempt_at"])
    return delivery


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - timezone.now()).total_seconds())
    except (TypeError, ValueError):
        return None


def backoff(attempt: int) -> float:
    base = BACKOFF_SECONDS[min(attempt, len(BACKOFF_SECONDS)) - 1]
    return base * random.uniform(0.8, 1.2)  # jitter: failed receivers aren't hit in lockstep


def deliver(delivery_id: Any, *, client: httpx.Client | None = None) -> str | None:
    """Make one attempt if the delivery is due. Returns the resulting status, or None when
    there was nothing to do (already delivered, not due, or another worker has it)."""
    delivery = _claim(delivery_id)
    if delivery is None:
        return None
    started = timezone.now()
    clock = time.monotonic()
    status_code: int | None = None
    error = ""
    retry_after: float | None = None
    try:
        target = resolve_target(delivery.url)
        secret = _signing_secret(delivery)
        if secret is None:
            raise UnsafeTarget("no signing secret for this callback (not a service account)")
        body = message_body(delivery.event)
        headers = signed_headers(str(delivery.event_id), secret, body, started)
        headers["host"] = target.host_header()
        own_client = client or httpx.Client(
            timeout=settings.HITL_WEBHOOK_TIMEOUT_SECONDS,
            follow_redirects=False,
            # No proxy from the environment: the address checked must be the one connected to.
            trust_env=False,
        )
        try:
            for n, address in enumerate(target.addresses, start=1):
                try:
                    response = own_client.post(
                        target.request_url(address),
                        content=body.encode(),
                        headers=headers,
                        extensions=target.extensions(),
                    )
                    break
                except httpx.ConnectError:
                    # Refused or unreachable (an IPv6 address on an IPv4-only host): the next
                    # checked address, as a client resolving by itself would. Not on timeouts,
                    # which would multiply the attempt's duration.
                    if n == len(target.addresses):
                        raise
        finally:
            if client is None:
                own_client.close()
        status_code = response.status_code
        retry_after = _retry_after(response) if status_code in (429, 503) else None
    except UnsafeTarget as exc:
        error = f"refused: {exc}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    except Exception as exc:
        # Whatever went wrong (a row that predates validation, a TLS library error, a bug):
        # a recorded failed attempt that counts toward HITL_WEBHOOK_MAX_ATTEMPTS, never a
        # crash that leaves the lease to expire and the attempt unrecorded, again and again.
        logger.warning(
            "webhook %s attempt %s crashed", delivery.pk, delivery.attempts, exc_info=True
        )
        error = f"{type(exc).__name__}: {exc}"
    duration_ms = int((time.monotonic() - clock) * 1000)
    return _record_attempt(delivery, started, duration_ms, status_code, error, retry_after)


def _record_attempt(
    delivery: WebhookDelivery,
    started: datetime,
    duration_ms: int,
    status_code: int | None,
    error: str,
    retry_after: float | None,
) -> str:
    now = timezone.now()
    with transaction.atomic():
        DeliveryAttempt.objects.create(
            delivery=delivery,
            number=delivery.attempts,
            started_at=started,
            duration_ms=duration_ms,
            status_code=status_code,
            error=error[:2000],
        )
        fields = ["status", "last_status_code", "last_error", "next_attempt_at"]
        delivery.last_status_code = status_code
        delivery.last_error = error[:2000]
        if status_code is not None and 200 <= status_code < 300:
            delivery.status = DeliveryStatus.DELIVERED
            delivery.delivered_at = now
            fields.append("delivered_at")
        elif status_code == 410 and delivery.endpoint is not None:
            # Gone: the receiver asks us to stop. Disable the endpoint, drop what is queued.
            delivery.status = DeliveryStatus.CANCELLED
            WebhookEndpoint.objects.filter(pk=delivery.endpoint.pk).update(
                active=False, disabled_reason=f"410 Gone at {now.isoformat()}"
            )
            WebhookDelivery.objects.filter(
                endpoint_id=delivery.endpoint.pk, status=DeliveryStatus.PENDING
            ).exclude(pk=delivery.pk).update(
                status=DeliveryStatus.CANCELLED, last_error="endpoint disabled (410)"
            )
        elif status_code == 410 or delivery.attempts >= settings.HITL_WEBHOOK_MAX_ATTEMPTS:
            delivery.status = DeliveryStatus.FAILED
        else:
            wait = retry_after if retry_after is not None else backoff(delivery.attempts)
            delivery.next_attempt_at = now + timedelta(seconds=wait)
        delivery.save(update_fields=fields)
    ops_metrics.webhook_attempt(status_code, error, duration_ms)  # recorded: count it
    if delivery.status != DeliveryStatus.DELIVERED:
        logger.info(
            "webhook %s attempt %s → %s %s",
            delivery.pk,
            delivery.attempts,
            status_code,
            error or delivery.status,
        )
    return delivery.status


def redeliver(delivery: WebhookDelivery) -> None:
    """Admin action: send again now (same webhook-id), whatever happened before."""
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        status=DeliveryStatus.PENDING, next_attempt_at=timezone.now()
    )


def due_delivery_ids(limit: int = 500) -> list[Any]:
    return list(
        WebhookDelivery.objects.filter(
            status=DeliveryStatus.PENDING, next_attempt_at__lte=timezone.now()
        )
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )
