"""Webhook endpoints for managers: a checkpoint's endpoints by its managers, global ones by
global managers (model-level manage_checkpoint) and superusers. The secret is returned once."""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from hitl.api import serializers as s
from hitl.api.schema import page_of
from hitl.api.views import BaseView
from notifications import webhooks
from notifications.models import WebhookEndpoint
from proposals import selectors
from proposals.errors import InvalidInput, NotFound, PermissionDenied
from proposals.permissions import MANAGE


class _WebhookBase(BaseView):
    def manages_globally(self) -> bool:
        return self.user.is_superuser or self.user.has_perm(f"proposals.{MANAGE}")

    def endpoints(self) -> QuerySet[WebhookEndpoint]:
        qs = WebhookEndpoint.objects.select_related("checkpoint").order_by("name", "pk")
        if self.manages_globally():
            return qs
        return qs.filter(Q(checkpoint_id__in=self.access.ids(MANAGE)))


class WebhookListCreateView(_WebhookBase):
    @extend_schema(
        operation_id="v1_webhooks_list",
        responses=page_of(s.WebhookEndpointOutputSerializer(), "WebhookList", paginated=False),
    )
    def get(self, request: Request) -> Response:
        data = s.WebhookEndpointOutputSerializer(self.endpoints(), many=True).data
        return Response({"results": data})

    @extend_schema(
        request=s.WebhookEndpointInputSerializer,
        responses={201: s.WebhookEndpointOutputSerializer},
    )
    def post(self, request: Request) -> Response:
        body = s.WebhookEndpointInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        fields: dict[str, Any] = dict(body.validated_data)
        checkpoint = None
        if fields["checkpoint"]:
            checkpoint = selectors.checkpoint_get(self.access, fields["checkpoint"])
            if not self.access.has(MANAGE, checkpoint.pk):
                raise PermissionDenied("Only the checkpoint's managers can add webhooks to it.")
        elif not self.manages_globally():
            raise PermissionDenied("Only global managers can add webhooks for every checkpoint.")
        try:
            created = webhooks.endpoint_create(
                name=fields["name"],
                url=fields["url"],
                events=fields["events"],
                checkpoint=checkpoint,
                created_by=self.user,
            )
        except webhooks.UnsafeTarget as exc:
            raise InvalidInput(str(exc), details={"url": [str(exc)]}) from None
        data = dict(s.WebhookEndpointOutputSerializer(created.endpoint).data)
        data["secret"] = created.secret  # shown once
        return Response(data, status=status.HTTP_201_CREATED)


class WebhookDetailView(_WebhookBase):
    def _get(self, endpoint_id: str) -> WebhookEndpoint:
        endpoint = None
        if endpoint_id.isascii() and endpoint_id.isdigit():  # "¹".isdigit() is True
            endpoint = self.endpoints().filter(pk=endpoint_id).first()
        if endpoint is None:
            raise NotFound("Webhook endpoint not found.")
        return endpoint

    @extend_schema(responses=s.WebhookEndpointOutputSerializer)
    def get(self, request: Request, endpoint_id: str) -> Response:
        return Response(s.WebhookEndpointOutputSerializer(self._get(endpoint_id)).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, endpoint_id: str) -> Response:
        self._get(endpoint_id).delete()
        return Response(status=status.HTTP_204_NO_CONTENT)
