from __future__ import annotations

from django.urls import path

from hitl.api import metrics_views, views, webhook_views

app_name = "api"

urlpatterns = [
    path("checkpoints/", views.CheckpointListView.as_view(), name="checkpoint-list"),
    path(
        "checkpoints/<slug:slug>/", views.CheckpointDetailView.as_view(), name="checkpoint-detail"
    ),
    path("proposals/", views.ProposalListCreateView.as_view(), name="proposal-list"),
    path("proposals/bulk/", views.ProposalBulkView.as_view(), name="proposal-bulk"),
    path(
        "proposals/<str:proposal_id>/", views.ProposalDetailView.as_view(), name="proposal-detail"
    ),
    path(
        "proposals/<str:proposal_id>/wait/", views.ProposalWaitView.as_view(), name="proposal-wait"
    ),
    path(
        "proposals/<str:proposal_id>/votes/", views.VoteCreateView.as_view(), name="proposal-votes"
    ),
    path(
        "proposals/<str:proposal_id>/revisions/",
        views.RevisionCreateView.as_view(),
        name="proposal-revisions",
    ),
    path("proposals/<str:proposal_id>/cancel/", views.CancelView.as_view(), name="proposal-cancel"),
    path("proposals/<str:proposal_id>/revoke/", views.RevokeView.as_view(), name="proposal-revoke"),
    path("proposals/<str:proposal_id>/claim/", views.ClaimView.as_view(), name="proposal-claim"),
    path(
        "proposals/<str:proposal_id>/events/", views.EventListView.as_view(), name="proposal-events"
    ),
    path("metrics/summary/", metrics_views.MetricsSummaryView.as_view(), name="metrics-summary"),
    path("webhooks/", webhook_views.WebhookListCreateView.as_view(), name="webhook-list"),
    path(
        "webhooks/<str:endpoint_id>/",
        webhook_views.WebhookDetailView.as_view(),
        name="webhook-detail",
    ),
]
