from __future__ import annotations

from django.urls import path

from notifications import consumers

websocket_urlpatterns = [
    path("ws/queue/", consumers.QueueConsumer.as_asgi()),
    path("ws/proposals/<str:proposal_id>/", consumers.ProposalConsumer.as_asgi()),
]
