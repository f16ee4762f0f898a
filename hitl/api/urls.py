from __future__ import annotations

from django.urls import path, register_converter

from hitl.api import metrics_views, views, webhook_views


class ProposalIdConverter:
    """A UUID, in ASCII hex (either case): anything else is a 404 at routing, so no Unicode
    digit or stray character ever reaches a query, and the schema states the pattern."""

    regex = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: object) -> str:
        return str(value)


class EndpointIdConverter(ProposalIdConverter):
    """ASCII digits only (`str.isdigit()` is also true of "¹" and "٣"), within a bigint."""

    regex = "[0-9]{1,18}"


register_converter(ProposalIdConverter, "uuid_hex")
register_converter(EndpointIdConverter, "digits")

app_name = "api"

urlpatterns = [
    path("checkpoints/", views.CheckpointListView.as_view(), name="checkpoint-list"),
    path(
        "checkpoints/<slug:slug>/", views.CheckpointDetailView.as_view(), name="checkpoint-detail"
    ),
    path("proposals/", views.ProposalListCreateView.as_view(), name="proposal-list"),
    path("proposals/bulk/", views.ProposalBulkView.as_view(), name="proposal-bulk"),
    path(
        "proposals/<uuid_hex:proposal_id>/",
        views.ProposalDetailView.as_view(),
        name="proposal-detail",
    ),
    path(
        "proposals/<uuid_hex:proposal_id>/wait/",
        views.ProposalWaitView.as_view(),
        name="proposal-wait",
    ),
    path(
        "proposals/<uuid_hex:proposal_id>/votes/",
        views.VoteCreateView.as_view(),
        name="proposal-votes",
    ),
    path(
        "proposals/<uuid_hex:proposal_id>/revisions/",
        views.RevisionCreateView.as_view(),
        name="proposal-revisions",
    ),
    path(
        "proposals/<uuid_hex:proposal_id>/cancel/",
        views.CancelView.as_view(),
        name="proposal-cancel",
    ),
    path(
        "proposals/<uuid_hex:proposal_id>/revoke/",
        views.RevokeView.as_view(),
        name="proposal-revoke",
    ),
    path(
        "proposals/<uuid_hex:proposal_id>/claim/", views.ClaimView.as_view(), name="proposal-claim"
    ),
    path(
        "proposals/<uuid_hex:proposal_id>/events/",
        views.EventListView.as_view(),
        name="proposal-events",
    ),
    path("metrics/summary/", metrics_views.MetricsSummaryView.as_view(), name="metrics-summary"),
    path("webhooks/", webhook_views.WebhookListCreateView.as_view(), name="webhook-list"),
    path(
        "webhooks/<digits:endpoint_id>/",
        webhook_views.WebhookDetailView.as_view(),
        name="webhook-detail",
    ),
]
