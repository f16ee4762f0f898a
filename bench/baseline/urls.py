from __future__ import annotations

from django.urls import path

from bench.baseline import views

urlpatterns = [
    path("items/", views.items),
    path("items/bulk/", views.bulk),
    path("items/<uuid:item_id>/decide/", views.decide),
    path("own-sql/<slug:page>/", views.own_sql),
]
