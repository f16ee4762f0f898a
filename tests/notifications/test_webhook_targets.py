"""Where a webhook may go: the address checked is the address connected to (no DNS
rebinding), only globally routable addresses pass, one URL check at every input, and every
attempt, however it fails, is recorded and counted.

The resolver stub replaces `socket.getaddrinfo`, the one function both our check and the HTTP
client's connect go through, so a second lookup would really be answered differently.
127.0.0.2 (allowed by HITL_WEBHOOK_ALLOWED_NETWORKS) stands in for the public address: the
test then also sees where the request went, and no packet leaves the machine.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.test import override_settings
from django.utils import timezone

from notifications import relay, webhooks
from notifications.crypto import encrypt, new_webhook_secret
from notifications.models import DeliveryAttempt, DeliveryStatus, WebhookDelivery, WebhookEndpoint
from proposals.models import Proposal
from tests.factories import submit
from tests.notifications.conftest import Receiver, _handler_for

pytestmark = pytest.mark.django_db

REAL_GETADDRINFO = socket.getaddrinfo


class Resolver:
    """Answers for the names in `answers` (one answer per lookup, the last one repeating; an
    answer is an address or a list of them), and asks the real resolver for everything else
    (IP literals, localhost)."""

    def __init__(self, answers: dict[str, list[Any]]) -> None:
        self.answers = {name: list(addresses) for name, addresses in answers.items()}
        self.lookups: list[str] = []

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in self.answers:
            return REAL_GETADDRINFO(host, port, *args, **kwargs)
        self.lookups.append(name)
        queue = self.answers[name]
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        infos = []
        for address in [answer] if isinstance(answer, str) else answer:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sockaddr: tuple[Any, ...] = (address, int(port or 0))
            if family == socket.AF_INET6:
                sockaddr = (address, int(port or 0), 0, 0)
            infos.append((family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr))
        return infos


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, list[Any]]], Resolver]:
    def install(answers: dict[str, list[Any]]) -> Resolver:
        stub = Resolver(answers)
        monkeypatch.setattr(socket, "getaddrinfo", stub)
        return stub

    return install


@pytest.fixture
def receiver_on() -> Iterator[Callable[[str, int], Receiver]]:
    """receiver_on(host, port) -> a live Receiver bound to that exact address."""
    started: list[Receiver] = []

    def make(host: str, port: int = 0) -> Receiver:
        recv = Receiver()
        recv.server = ThreadingHTTPServer((host, port), _handler_for(recv))
        recv.server.daemon_threads = True
        threading.Thread(target=recv.server.serve_forever, args=(0.05,), daemon=True).start()
        started.append(recv)
        return recv

    yield make
    for recv in started:
        assert recv.server is not None
        recv.server.shutdown()
        recv.server.server_close()


def endpoint_row(url: str) -> WebhookEndpoint:
    """Straight into the table: as a row registered before a rule existed, or whose DNS has
    changed since."""
    return WebhookEndpoint.objects.create(
        name="hook", url=url, secret_encrypted=encrypt(new_webhook_secret())
    )


def delivery_for(world: Any, endpoint: WebhookEndpoint) -> WebhookDelivery:
    proposal = submit(world.submitter, world.checkpoint)
    relay.relay_all()
    return WebhookDelivery.objects.get(
        endpoint=endpoint, event__proposal=proposal, event__topic="proposal.submitted"
    )


# --- (a) DNS rebinding ---------------------------------------------------------------------


def test_dns_rebinding_cannot_redirect_delivery_to_loopback(world, resolver, receiver_on):
    loopback = receiver_on("127.0.0.1")
    assert loopback.server is not None
    port = loopback.server.server_address[1]
    checked = receiver_on("127.0.0.2", port)  # the address the check approves
    stub = resolver({"hooks.rebind.test": ["127.0.0.2", "127.0.0.1"]})
    delivery = delivery_for(world, endpoint_row(f"http://hooks.rebind.test:{port}/hook"))

    with override_settings(HITL_WEBHOOK_ALLOWED_NETWORKS=["127.0.0.2/32"]):
        status = webhooks.deliver(delivery.pk)

    assert loopback.requests == [], "a signed POST reached loopback"
    assert status == DeliveryStatus.DELIVERED
    (request,) = checked.requests
    assert request.path == "/hook"
    assert request.headers["host"] == f"hooks.rebind.test:{port}"
    assert stub.lookups == ["hooks.rebind.test"]  # resolved once: checked, then connected


def test_a_refused_connection_falls_back_to_the_next_checked_address(world, resolver, receiver_on):
    recv = receiver_on("127.0.0.2")
    assert recv.server is not None
    port = recv.server.server_address[1]
    # 127.0.0.3 has nothing listening on the port: refused, as an unreachable address is.
    stub = resolver({"hooks.two.test": [["127.0.0.3", "127.0.0.2"], "127.0.0.1"]})
    delivery = delivery_for(world, endpoint_row(f"http://hooks.two.test:{port}/hook"))
    with override_settings(HITL_WEBHOOK_ALLOWED_NETWORKS=["127.0.0.2/32", "127.0.0.3/32"]):
        assert webhooks.deliver(delivery.pk) == DeliveryStatus.DELIVERED
    assert len(recv.requests) == 1
    assert stub.lookups == ["hooks.two.test"]


def test_a_name_with_any_non_public_address_is_refused(world, resolver):
    resolver({"mixed.test": [["93.184.215.14", "127.0.0.1"]]})
    with pytest.raises(webhooks.UnsafeTarget, match="non-public"):
        webhooks.endpoint_create(name="x", url="https://mixed.test/hook")


# --- (b) only globally routable addresses --------------------------------------------------

NON_GLOBAL = [
    "100.64.0.1",  # carrier-grade NAT: cloud metadata services live there
    "100.100.100.200",
    "198.18.0.1",  # benchmarking
    "192.0.0.1",  # IETF protocol assignments
    "192.0.2.10",  # documentation
    "240.0.0.1",  # reserved
    "255.255.255.255",
    "::ffff:127.0.0.1",  # loopback, IPv4-mapped
    "fc00::1",  # unique local
    "2001:db8::1",  # documentation
]


@pytest.mark.parametrize("address", NON_GLOBAL)
def test_every_non_global_address_is_refused(world, resolver, address):
    resolver({"inside.test": [address]})
    literal = f"[{address}]" if ":" in address else address
    for url in (f"https://inside.test/hook", f"https://{literal}/hook"):  # noqa: F541
        with pytest.raises(webhooks.UnsafeTarget, match="non-public"):
            webhooks.endpoint_create(name="inside", url=url)
    assert not WebhookEndpoint.objects.exists()


def test_cgnat_is_refused_at_delivery_and_allowed_only_by_the_setting(world, resolver):
    resolver({"metadata.test": ["100.100.100.200"]})
    delivery = delivery_for(world, endpoint_row("http://metadata.test/latest"))
    assert webhooks.deliver(delivery.pk) == DeliveryStatus.PENDING
    attempt = DeliveryAttempt.objects.get(delivery=delivery)
    assert attempt.error.startswith("refused: ") and "100.100.100.200" in attempt.error

    with override_settings(HITL_WEBHOOK_ALLOWED_NETWORKS=["100.64.0.0/10"]):
        webhooks.check_target("http://metadata.test/latest")
        webhooks.check_target("http://100.64.1.1/")


def test_a_public_address_passes(world, resolver):
    resolver({"hooks.example.test": ["93.184.215.14"]})
    target = webhooks.resolve_target("https://hooks.example.test/a?b=1")
    assert target.addresses == ("93.184.215.14",)
    assert str(target.request_url("93.184.215.14")) == "https://93.184.215.14/a?b=1"
    assert target.host_header() == "hooks.example.test"
    assert target.extensions() == {"sni_hostname": "hooks.example.test"}


# --- (c) one URL check at every input, every attempt recorded -------------------------------

MALFORMED = [
    "http://example.com:99999/hook",
    "http://example.com:0/hook",
    "http://example.com:http/hook",
    "http://[::1/hook",
    "https://user:secret@example.com/hook",
    "http://exa mple.com/hook",
    "http://example.com/a\x7fb",
    "https://" + "a" * 500 + ".com/",
]


@pytest.mark.parametrize("url", MALFORMED)
def test_malformed_webhook_url_is_a_400_not_a_500(world, client_for, url):
    response = client_for(world.manager).post(
        "/api/v1/webhooks/",
        {"name": "bad", "url": url, "checkpoint": "inspection-schedule"},
        format="json",
    )
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["error"]["code"] == "invalid"
    assert "url" in body["error"]["details"]
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.parametrize("url", [*MALFORMED, "http://169.254.169.254/latest/"])
def test_malformed_callback_url_is_refused_at_submission(world, client_for, url):
    response = client_for(world.submitter).post(
        "/api/v1/proposals/",
        {
            "checkpoint": "inspection-schedule",
            "title": "t",
            "payload": {"x": 1},
            "callback_url": url,
        },
        format="json",
    )
    assert response.status_code == 400, response.content
    assert "callback_url" in response.json()["error"]["details"]
    assert not Proposal.objects.exists()


def test_webhook_id_with_a_unicode_digit_is_a_404(world, client_for):
    response = client_for(world.manager).get("/api/v1/webhooks/%C2%B9/")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@override_settings(HITL_WEBHOOK_MAX_ATTEMPTS=2)
def test_a_malformed_callback_url_is_recorded_failed_attempts_not_a_crash_loop(world):
    """A row that predates validation: each attempt is recorded and counts; the delivery
    ends FAILED after HITL_WEBHOOK_MAX_ATTEMPTS instead of being leased again forever."""
    proposal = submit(world.submitter, world.checkpoint)
    Proposal.objects.filter(pk=proposal.pk).update(callback_url="http://example.com:99999/")
    submit(world.submitter, world.checkpoint)  # an event after the change
    relay.relay_all()
    delivery = WebhookDelivery.objects.get(url="http://example.com:99999/")

    assert webhooks.deliver(delivery.pk) == DeliveryStatus.PENDING
    WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
    assert webhooks.deliver(delivery.pk) == DeliveryStatus.FAILED

    attempts = list(DeliveryAttempt.objects.filter(delivery=delivery).order_by("number"))
    assert [a.number for a in attempts] == [1, 2]
    assert all("port" in a.error.lower() for a in attempts), [a.error for a in attempts]


class Exploding(httpx.BaseTransport):
    def handle_request(self, request: httpx.Request) -> httpx.Response:
        raise RuntimeError("the TLS library fell over")


@override_settings(HITL_WEBHOOK_ALLOWED_NETWORKS=["127.0.0.0/8"], HITL_WEBHOOK_MAX_ATTEMPTS=1)
def test_any_exception_in_an_attempt_is_a_recorded_failed_attempt(world):
    delivery = delivery_for(world, endpoint_row("http://127.0.0.1:9/hook"))
    with httpx.Client(transport=Exploding()) as client:
        assert webhooks.deliver(delivery.pk, client=client) == DeliveryStatus.FAILED
    attempt = DeliveryAttempt.objects.get(delivery=delivery)
    assert attempt.error == "RuntimeError: the TLS library fell over"


@override_settings(HITL_WEBHOOK_MAX_ATTEMPTS=2)
def test_an_attempt_that_died_unrecorded_past_the_limit_gives_up(world):
    """A worker killed mid-attempt leaves `attempts` counted but no record: past the limit
    the next claim ends the delivery instead of leasing it again."""
    delivery = delivery_for(world, endpoint_row("http://127.0.0.1:9/hook"))
    WebhookDelivery.objects.filter(pk=delivery.pk).update(attempts=2)
    assert webhooks.deliver(delivery.pk) is None
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED
    assert "gave up after 2 attempts" in delivery.last_error


# --- TLS to the pinned address keeps the name --------------------------------------------


def _certificate_authority() -> tuple[Any, Any, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nihil-obstat test CA")])
    now = timezone.now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert, cert.public_bytes(serialization.Encoding.PEM)


def _leaf(ca_key: Any, ca_cert: Any, hostname: str, directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = timezone.now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{hostname}.pem", directory / f"{hostname}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_receiver(tmp_path: Path) -> Iterator[Callable[[str], tuple[Receiver, list[str], bytes]]]:
    """tls_receiver(certificate_name) -> (a Receiver on https://127.0.0.2, the SNI names it
    was sent, the PEM of the CA that signed its certificate)."""
    ca_key, ca_cert, ca_pem = _certificate_authority()
    started: list[Receiver] = []

    def make(certificate_name: str) -> tuple[Receiver, list[str], bytes]:
        cert_path, key_path = _leaf(ca_key, ca_cert, certificate_name, tmp_path)
        server_names: list[str] = []
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_path, key_path)
        context.sni_callback = lambda sock, name, ctx: server_names.append(name or "")  # type: ignore[func-returns-value,assignment]
        recv = Receiver()
        recv.server = ThreadingHTTPServer(("127.0.0.2", 0), _handler_for(recv))
        recv.server.socket = context.wrap_socket(recv.server.socket, server_side=True)
        recv.server.daemon_threads = True
        threading.Thread(target=recv.server.serve_forever, args=(0.05,), daemon=True).start()
        started.append(recv)
        return recv, server_names, ca_pem

    yield make
    for recv in started:
        assert recv.server is not None
        recv.server.shutdown()
        recv.server.server_close()


@override_settings(HITL_WEBHOOK_ALLOWED_NETWORKS=["127.0.0.2/32"])
def test_tls_to_the_pinned_address_sends_the_name_and_verifies_its_certificate(
    world, resolver, tls_receiver
):
    recv, server_names, ca_pem = tls_receiver("hooks.tls.test")
    assert recv.server is not None
    port = recv.server.server_address[1]
    stub = resolver({"hooks.tls.test": ["127.0.0.2", "127.0.0.1"]})
    delivery = delivery_for(world, endpoint_row(f"https://hooks.tls.test:{port}/hook"))
    trust = ssl.create_default_context(cadata=ca_pem.decode())

    with httpx.Client(verify=trust, trust_env=False) as client:
        assert webhooks.deliver(delivery.pk, client=client) == DeliveryStatus.DELIVERED

    assert server_names == ["hooks.tls.test"]
    (request,) = recv.requests
    assert request.headers["host"] == f"hooks.tls.test:{port}"
    assert stub.lookups == ["hooks.tls.test"]


@override_settings(HITL_WEBHOOK_ALLOWED_NETWORKS=["127.0.0.2/32"])
def test_tls_certificate_for_another_name_is_a_recorded_failure(world, resolver, tls_receiver):
    recv, _, ca_pem = tls_receiver("someone-else.test")
    assert recv.server is not None
    port = recv.server.server_address[1]
    resolver({"hooks.tls.test": ["127.0.0.2"]})
    delivery = delivery_for(world, endpoint_row(f"https://hooks.tls.test:{port}/hook"))
    trust = ssl.create_default_context(cadata=ca_pem.decode())

    with httpx.Client(verify=trust, trust_env=False) as client:
        assert webhooks.deliver(delivery.pk, client=client) == DeliveryStatus.PENDING

    assert recv.requests == []
    attempt = DeliveryAttempt.objects.get(delivery=delivery)
    assert attempt.status_code is None
    assert "CERTIFICATE_VERIFY_FAILED" in attempt.error or "hostname" in attempt.error.lower()


@pytest.mark.parametrize("url", ["http://example.com:99999/hook", "https://100.64.0.1/"])
def test_the_admin_refuses_a_malformed_or_non_global_webhook_url(world, admin_client, url):
    response = admin_client.post(
        "/admin/notifications/webhookendpoint/add/",
        {"name": "bad", "url": url, "active": "on"},
    )
    assert response.status_code == 200  # the form again, with the error; not a 500
    assert "errorlist" in response.content.decode()
    assert not WebhookEndpoint.objects.exists()
