"""GET /api/v1/metrics/summary/: the dashboard's numbers (hitl.dashboard.summary), for
managers, over the checkpoints they manage."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from hitl import dashboard
from proposals.errors import InvalidInput, NotFound, PermissionDenied
from proposals.models import Checkpoint
from proposals.permissions import MANAGE, access_for


class MetricsSummaryView(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("checkpoint", str, description="One checkpoint's slug."),
            OpenApiParameter("period", str, enum=["24h", "7d", "30d", "custom"]),
            OpenApiParameter("from", str, description="custom: first day, YYYY-MM-DD"),
            OpenApiParameter("to", str, description="custom: last day, YYYY-MM-DD"),
        ],
        responses={200: dict[str, Any]},
    )
    def get(self, request: Request) -> Response:
        access = access_for(request.user)  # type: ignore[arg-type]
        managed = access.ids(MANAGE)
        if not managed:
            raise PermissionDenied("The metrics summary is for managers of a checkpoint.")
        try:
            window = dashboard.Window.from_params(request.query_params)
        except ValueError as exc:
            raise InvalidInput(str(exc), details={"period": str(exc)}) from None
        checkpoints = Checkpoint.objects.filter(pk__in=managed).order_by("slug")
        slug = request.query_params.get("checkpoint")
        if slug:
            checkpoints = checkpoints.filter(slug=slug)
            if not checkpoints:
                raise NotFound(f"Checkpoint {slug!r} not found.")
        return Response(dashboard.summary(list(checkpoints), window))
