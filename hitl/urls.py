from __future__ import annotations

from django.urls import path

from hitl import views

urlpatterns = [
    path("queue/", views.queue, name="queue"),
    path("queue/bulk/", views.bulk_decide, name="queue-bulk"),
    path("queue/<str:proposal_id>/", views.proposal_page, name="proposal-page"),
    path("proposals/<str:proposal_id>/", views.proposal_page, name="proposal-page-alias"),
    path("queue/<str:proposal_id>/decide/", views.decide, name="proposal-decide"),
    path("queue/<str:proposal_id>/edit/", views.edit_and_approve, name="proposal-edit"),
    path("queue/<str:proposal_id>/claim/", views.claim, name="proposal-claim"),
    path("queue/<str:proposal_id>/withdraw/", views.cancel_or_revoke, name="proposal-withdraw"),
    path("dashboard/", views.dashboard, name="dashboard"),
    path("dashboard/apply-threshold/", views.apply_threshold, name="dashboard-apply"),
    path("connect/", views.connect, name="connect"),
    path("email/act/<str:token>/", views.email_action, name="email-action"),
]
