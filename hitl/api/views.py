"""One small view per operation: validate, fetch through a selector that authorizes, call one
service, render."""

from __future__ import annotations

import copy
import functools
import time
from typing import Any, cast

from django.conf import settings
from django.contrib.auth.models import User
from django.db import DatabaseError, transaction
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

from hitl.api import rows
from hitl.api import serializers as s
from hitl.api.errors import exception_handler as api_exception_handler
from hitl.api.idempotency import run_idempotent, run_idempotent_chunks
from hitl.api.pagination import paginate
from hitl.api.schema import page_of
from proposals import selectors, services
from proposals.bulk import SubmitItem, proposal_submit_many
from proposals.errors import ApplicationError, InvalidInput, NotFound
from proposals.models import Checkpoint, Proposal, Revision, Status, Vote
from proposals.permissions import Access, RightsCache, access_for

# What DRF's content negotiation answers for these Accept headers when JSON is the one
# renderer and no format is asked for (by suffix or `?format=`); any other header negotiates.
_JSON_ACCEPTS = frozenset({None, "*/*", "application/json"})


class BaseView(APIView):
    _access: Access | None = None
    _throttles: list[BaseThrottle] | None = None

    def get_throttles(self) -> list[BaseThrottle]:
        # Asked twice a call: by the authentication, which counts the key's call in its own
        # Redis round trip (hitl.api.throttling.counters_for), then by DRF's check.
        if self._throttles is None:
            self._throttles = super().get_throttles()
        return self._throttles

    def perform_content_negotiation(
        self, request: Request, force: bool = False
    ) -> tuple[BaseRenderer, str]:
        renderers = self.get_renderers()
        if (
            len(renderers) == 1
            and renderers[0].media_type == "application/json"
            and request.META.get("HTTP_ACCEPT") in _JSON_ACCEPTS
            and getattr(self, "format_kwarg", None) is None
            and api_settings.URL_FORMAT_OVERRIDE not in request._request.GET
        ):
            return renderers[0], renderers[0].media_type
        return super().perform_content_negotiation(request, force)  # type: ignore[no-any-return]

    @property
    def user(self) -> User:
        # Every view requires authentication (DEFAULT_PERMISSION_CLASSES), so never anonymous.
        return cast(User, self.request.user)

    @property
    def access(self) -> Access:
        if self._access is None:
            # Read with the API key by the authentication (hitl.authentication), else now.
            found = getattr(self.request._request, "hitl_access", None)
            self._access = found if found is not None else access_for(self.request.user)
        return self._access

    def detail_response(self, proposal: Proposal, code: int = status.HTTP_200_OK) -> Response:
        return Response(self.detail_data(proposal), status=code)

    def detail_data(self, proposal: Proposal) -> dict[str, Any]:
        fresh = selectors.proposal_get(self.access, proposal.pk, with_children=True)
        return dict(s.ProposalDetailOutputSerializer(fresh, context={"access": self.access}).data)


# --- checkpoints ---------------------------------------------------------------------------


class CheckpointListView(BaseView):
    @extend_schema(
        operation_id="v1_checkpoints_list",
        responses=page_of(s.CheckpointOutputSerializer(), "CheckpointList", paginated=False),
    )
    def get(self, request: Request) -> Response:
        checkpoints = selectors.checkpoint_list(self.access)
        return Response({"results": s.CheckpointOutputSerializer(checkpoints, many=True).data})


class CheckpointDetailView(BaseView):
    @extend_schema(responses=s.CheckpointOutputSerializer)
    def get(self, request: Request, slug: str) -> Response:
        checkpoint = selectors.checkpoint_get(self.access, slug)
        return Response(s.CheckpointOutputSerializer(checkpoint).data)


# --- proposals -----------------------------------------------------------------------------


# Checkpoints by slug, remembered like the caller's key and grants: every save or deletion of
# a checkpoint moves the rights version (notifications.live), so a changed policy, a started
# or ended bypass, reaches every process's next submit.
_checkpoints: RightsCache[str, Checkpoint] = RightsCache()


def _submit_checkpoint(access: Access, slug: str) -> Checkpoint:
    """selectors.checkpoint_get, its visibility rule applied to a remembered row."""
    checkpoint = _checkpoints.get(slug, access.rights_version)
    if checkpoint is not None:
        if checkpoint.pk not in access.visible_checkpoint_ids:
            raise NotFound(f"Checkpoint {slug!r} not found.")
        return copy.copy(checkpoint)  # a request's changes stay its own
    generation = _checkpoints.generation()
    checkpoint = selectors.checkpoint_get(access, slug)
    _checkpoints.put(slug, copy.copy(checkpoint), access.rights_version, generation)
    return checkpoint


def _submit_one(view: BaseView, data: Any, idempotency_key: str | None) -> Proposal:
    serializer = s.ProposalInputSerializer(data=data)
    serializer.is_valid(raise_exception=True)
    fields = dict(serializer.validated_data)
    slug = fields.pop("checkpoint")
    try:
        checkpoint = _submit_checkpoint(view.access, slug)
    except ApplicationError:
        raise InvalidInput(
            "Unknown checkpoint.", details={"checkpoint": [f"No checkpoint {slug!r}."]}
        ) from None
    return services.proposal_submit(
        submitter=view.user,
        checkpoint=checkpoint,
        data=services.ProposalInput(**fields),
        idempotency_key=idempotency_key,
        access=view.access,
    )


class ProposalListCreateView(BaseView):
    renderer_classes = [rows.PageRenderer]

    @extend_schema(
        operation_id="v1_proposals_list",
        parameters=[s.ProposalListQuerySerializer],
        responses=page_of(s.ProposalListItemSerializer(), "ProposalPage", paginated=True),
    )
    def get(self, request: Request) -> Response:
        query = s.ProposalListQuerySerializer(data=_query_data(request, lists={"label"}))
        query.is_valid(raise_exception=True)
        q = query.validated_data
        labels: dict[str, str] = {}
        for item in q.get("label", []):
            key, sep, value = item.partition(":")
            if not sep or not key:
                raise InvalidInput("Labels filter as key:value.", details={"label": item})
            labels[key] = value
        filters = selectors.ProposalFilters(
            status=_csv(q.get("status")),
            checkpoint=q.get("checkpoint"),
            region=q.get("region"),
            priority=_csv(q.get("priority")),
            labels=labels,
            reviewable_by_me=q.get("reviewable") == "me",
            submitted_by_me=q.get("submitted") == "me",
            external_id=q.get("external_id"),
        )

        def fetch(after: Any, limit: int) -> list[dict[str, Any]]:
            return selectors.proposal_page(
                self.access, filters, size=limit, after=after, shape=rows.proposal_rows
            )

        page, next_url = paginate(
            request, fetch, q.get("page_size", settings.HITL_PAGE_SIZE), q.get("cursor")
        )
        return Response({"results": rows.render(page, self.access), "next": next_url})

    @extend_schema(
        request=s.ProposalInputSerializer,
        responses={201: s.ProposalDetailOutputSerializer},
        parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER)],
    )
    def post(self, request: Request) -> Response:
        def submit(key: str | None) -> tuple[int, dict[str, Any]]:
            proposal = _submit_one(self, request.data, key)
            # Rendered from what was written (the service hands back its revision and no
            # votes): reading the proposal back with its children cost four queries.
            data = s.ProposalDetailOutputSerializer(proposal, context={"access": self.access}).data
            return status.HTTP_201_CREATED, dict(data)

        return run_idempotent(request, "proposals.submit", submit)


class ProposalBulkView(BaseView):
    # Items written per transaction: the audit chain's lock is held for one chunk, not the
    # whole batch, and a chunk's rows go in with one INSERT per table.
    CHUNK = 100

    @extend_schema(
        request=s.BulkInputSerializer,
        responses=s.BulkOutputSerializer,
        parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER)],
    )
    def post(self, request: Request) -> Response:
        body = s.BulkInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        items = body.validated_data["proposals"]
        if len(items) > settings.HITL_BULK_MAX:
            raise InvalidInput(f"At most {settings.HITL_BULK_MAX} proposals per request.")
        checkpoints = self._checkpoints(items)
        # One serializer validates every item, as DRF's ListSerializer does with its child:
        # building one per item (its fields deep-copied each time) cost more than the writes.
        parser = s.ProposalInputSerializer()

        def error(index: int, exc: ApplicationError | APIException) -> dict[str, Any]:
            response = api_exception_handler(exc, {})
            assert response is not None  # both kinds always map to a response
            return {"index": index, "status": response.status_code, **response.data}

        def created(index: int, row: dict[str, Any]) -> dict[str, Any]:
            return {"index": index, "status": 201, "proposal": row}

        def submit_chunk(indexes: list[int], keys: list[str | None]) -> list[dict[str, Any]]:
            answers: dict[int, dict[str, Any]] = {}
            done: dict[str, Proposal] = {}
            if keys and keys[0] is not None:
                # A retry after a crash: these items were created (and committed) the first
                # time. One query for the chunk.
                done = {
                    cast(str, p.idempotency_key): p
                    for p in Proposal.objects.filter(
                        submitted_by=self.user, idempotency_key__in=keys
                    ).select_related("checkpoint", "submitted_by", "claimed_by")
                }
            todo: list[tuple[int, SubmitItem]] = []
            made: list[tuple[int, Proposal]] = []
            for index, key in zip(indexes, keys, strict=True):
                if key is not None and key in done:
                    made.append((index, done[key]))
                    continue
                try:
                    todo.append((index, _bulk_item(parser, items[index], key, checkpoints)))
                except (ApplicationError, APIException) as exc:
                    answers[index] = error(index, exc)
            results: list[Proposal | ApplicationError | APIException]
            try:
                results = list(
                    proposal_submit_many(
                        submitter=self.user, items=[item for _i, item in todo], access=self.access
                    )
                )
            except DatabaseError:
                # A reused key (or a deadlock) undid the chunk: each item alone, as before.
                results = [self._submit_alone(item) for _i, item in todo]
            for (index, _item), result in zip(todo, results, strict=True):
                if isinstance(result, ApplicationError | APIException):
                    answers[index] = error(index, result)
                else:
                    made.append((index, result))
            rendered = self._rows([proposal for _index, proposal in made])
            for (index, _proposal), row in zip(made, rendered, strict=True):
                answers[index] = created(index, row)
            return [answers[index] for index in indexes]

        return run_idempotent_chunks(
            request, "proposals.bulk", len(items), self.CHUNK, submit_chunk
        )

    @staticmethod
    def _rows(proposals: list[Proposal]) -> list[dict[str, Any]]:
        """The list's rows of proposals in hand (just written, or read with their checkpoint
        and users), rendered by `rows.render` as a list page renders them: the same fields
        as ProposalOutputSerializer without building that serializer per item. One render
        per chunk, not per item (its converters are looked up per call)."""
        paths = _row_paths()
        values: list[dict[str, Any]] = []
        for proposal in proposals:
            row: dict[str, Any] = {}
            for source, parts in paths:
                value: Any = proposal
                for part in parts:
                    value = getattr(value, part) if value is not None else None
                row[source] = value
            values.append(row)
        return rows.render(values)

    def _checkpoints(self, items: list[Any]) -> dict[str, Checkpoint]:
        """The visible checkpoints the items name, in one query."""
        slugs = {
            i["checkpoint"]
            for i in items
            if isinstance(i, dict) and isinstance(i.get("checkpoint"), str)
        }
        return {c.slug: c for c in selectors.checkpoint_list(self.access).filter(slug__in=slugs)}

    def _submit_alone(self, item: SubmitItem) -> Proposal | ApplicationError | APIException:
        try:
            with transaction.atomic():
                return services.proposal_submit(
                    submitter=self.user,
                    checkpoint=item.checkpoint,
                    data=item.data,
                    idempotency_key=item.idempotency_key,
                    access=self.access,
                )
        except (ApplicationError, APIException) as exc:
            return exc


@functools.cache
def _row_paths() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Each list-row value name and the attribute path that reads it from a proposal."""
    return tuple((source, tuple(source.split("__"))) for source in rows.value_names())


def _bulk_item(
    parser: s.ProposalInputSerializer,
    data: Any,
    key: str | None,
    checkpoints: dict[str, Checkpoint],
) -> SubmitItem:
    try:
        fields = dict(parser.run_validation(data))
    except ValidationError:
        # Worded exactly as a single submit words it (is_valid runs the same validation).
        serializer = s.ProposalInputSerializer(data=data)
        serializer.is_valid(raise_exception=True)
        raise
    slug = fields.pop("checkpoint")
    checkpoint = checkpoints.get(slug)
    if checkpoint is None:
        raise InvalidInput(
            "Unknown checkpoint.", details={"checkpoint": [f"No checkpoint {slug!r}."]}
        )
    return SubmitItem(
        checkpoint=checkpoint, data=services.ProposalInput(**fields), idempotency_key=key
    )


def _query_data(request: Request, lists: set[str]) -> dict[str, Any]:
    """The query string as plain data. Not the QueryDict itself: DRF reads an empty
    `?checkpoint=` from a QueryDict as "absent" and would ignore it, where the schema (and a
    typo'd client) deserve a 400."""
    params = request.query_params
    return {k: params.getlist(k) if k in lists else params.get(k) for k in params}


def _csv(value: str | None) -> list[str] | None:
    return [part for part in value.split(",") if part] if value else None


class ProposalDetailView(BaseView):
    @extend_schema(responses=s.ProposalDetailOutputSerializer)
    def get(self, request: Request, proposal_id: str) -> Response:
        proposal = selectors.proposal_get(self.access, proposal_id, with_children=True)
        return Response(
            s.ProposalDetailOutputSerializer(proposal, context={"access": self.access}).data
        )


class ProposalWaitView(BaseView):
    POLL_SECONDS = 0.5

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "timeout", float, description="seconds, default 30, at most HITL_WAIT_MAX_SECONDS"
            )
        ],
        responses=s.ProposalDetailOutputSerializer,
    )
    def get(self, request: Request, proposal_id: str) -> Response:
        raw = request.query_params.get("timeout", "30")
        try:
            timeout = float(raw)
        except ValueError:
            raise InvalidInput("timeout must be a number of seconds.") from None
        if not 0 <= timeout <= settings.HITL_WAIT_MAX_SECONDS:
            raise InvalidInput(f"timeout must be between 0 and {settings.HITL_WAIT_MAX_SECONDS}.")
        proposal = selectors.proposal_get(self.access, proposal_id)
        deadline = time.monotonic() + timeout
        # A cheap indexed read per tick; live updates over Channels will replace the polling.
        while proposal.status == Status.PENDING and time.monotonic() < deadline:
            time.sleep(min(self.POLL_SECONDS, max(0.0, deadline - time.monotonic())))
            current = Proposal.objects.filter(pk=proposal.pk).values_list("status", flat=True)
            if current.first() != Status.PENDING:
                break
        return self.detail_response(proposal)


class VoteCreateView(BaseView):
    @extend_schema(request=s.VoteInputSerializer, responses={201: s.ProposalDetailOutputSerializer})
    def post(self, request: Request, proposal_id: str) -> Response:
        body = s.VoteInputSerializer(data=request.data)
        if not body.is_valid():
            selectors.proposal_get(self.access, proposal_id)  # 404 before 400 for the unseen
            raise ValidationError(body.errors)
        # vote_cast answers 404 to whoever may not see the proposal, like proposal_get.
        proposal, vote = services.vote_cast(
            proposal_id=proposal_id,
            reviewer=self.user,
            access=self.access,
            **body.validated_data,
        )
        # Rendered from the proposal as the vote left it (locked, written, with its users),
        # its children read once after the commit, as a fresh read would.
        _with_children(proposal)
        data = dict(
            s.ProposalDetailOutputSerializer(proposal, context={"access": self.access}).data
        )
        data["vote"] = s.VoteOutputSerializer(vote).data
        return Response(data, status=status.HTTP_201_CREATED)


def _with_children(proposal: Proposal) -> None:
    """What selectors.proposal_get(with_children=True) prefetches, for a proposal in hand."""
    revisions = list(
        Revision.objects.filter(proposal=proposal).select_related("author").order_by("number")
    )
    votes = list(Vote.objects.filter(proposal=proposal).select_related("reviewer"))
    cache = proposal.__dict__.setdefault("_prefetched_objects_cache", {})
    for name, rows_in_hand in (("revisions", revisions), ("votes", votes)):
        queryset = getattr(proposal, name).all()
        queryset._result_cache = rows_in_hand
        queryset._prefetch_done = True
        cache[name] = queryset


class RevisionCreateView(BaseView):
    @extend_schema(
        request=s.ReviseInputSerializer, responses={201: s.ProposalDetailOutputSerializer}
    )
    def post(self, request: Request, proposal_id: str) -> Response:
        selectors.proposal_get(self.access, proposal_id)
        body = s.ReviseInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        proposal = services.proposal_revise(
            proposal_id=proposal_id,
            actor=self.user,
            access=self.access,
            **body.validated_data,
        )
        return self.detail_response(proposal, status.HTTP_201_CREATED)


class CancelView(BaseView):
    @extend_schema(request=s.ReasonInputSerializer, responses=s.ProposalDetailOutputSerializer)
    def post(self, request: Request, proposal_id: str) -> Response:
        selectors.proposal_get(self.access, proposal_id)
        body = s.ReasonInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        proposal = services.proposal_cancel(
            proposal_id=proposal_id,
            actor=self.user,
            access=self.access,  # type: ignore[arg-type]
            reason=body.validated_data["reason"],
        )
        return self.detail_response(proposal)


class RevokeView(BaseView):
    @extend_schema(request=s.ReasonInputSerializer, responses=s.ProposalDetailOutputSerializer)
    def post(self, request: Request, proposal_id: str) -> Response:
        selectors.proposal_get(self.access, proposal_id)
        body = s.ReasonInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        proposal = services.proposal_revoke(
            proposal_id=proposal_id,
            actor=self.user,
            access=self.access,  # type: ignore[arg-type]
            reason=body.validated_data["reason"],
        )
        return self.detail_response(proposal)


class ClaimView(BaseView):
    @extend_schema(request=None, responses=s.ProposalDetailOutputSerializer)
    def post(self, request: Request, proposal_id: str) -> Response:
        selectors.proposal_get(self.access, proposal_id)
        proposal = services.proposal_claim(
            proposal_id=proposal_id,
            actor=self.user,
            access=self.access,  # type: ignore[arg-type]
        )
        return self.detail_response(proposal)

    @extend_schema(request=None, responses={200: s.ProposalDetailOutputSerializer})
    def delete(self, request: Request, proposal_id: str) -> Response:
        selectors.proposal_get(self.access, proposal_id)
        proposal = services.proposal_release(
            proposal_id=proposal_id,
            actor=self.user,
            access=self.access,  # type: ignore[arg-type]
        )
        return self.detail_response(proposal)


class EventListView(BaseView):
    @extend_schema(
        operation_id="v1_proposals_events_list",
        responses=page_of(s.AuditEventOutputSerializer(), "AuditEventList", paginated=False),
    )
    def get(self, request: Request, proposal_id: str) -> Response:
        events = selectors.proposal_events(self.access, proposal_id)
        return Response({"results": s.AuditEventOutputSerializer(events, many=True).data})
