from __future__ import annotations

from django.urls import path

from hitl import views

urlpatterns = [
    path("queue/", views.queue, name="queue"),
    path("queue/<str:proposal_id>/", views.proposal_page, name="proposal-page"),
    path("email/act/<str:token>/", views.email_action, name="email-action"),
]
