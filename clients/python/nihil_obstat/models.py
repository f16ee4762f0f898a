"""Typed views of the API's JSON. Every object keeps the `raw` dict it was read from, so
fields added by newer servers are never lost."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

OPEN_STATUSES = frozenset({"pending", "changes_requested"})


class PydanticModel(Protocol):
    """What this package needs of a pydantic v2 model class (pydantic itself is optional)."""

    @classmethod
    def model_json_schema(cls) -> dict[str, Any]: ...

    @classmethod
    def model_validate(cls, obj: Any) -> Any: ...


M = TypeVar("M")


@dataclass(frozen=True)
class Vote:
    reviewer: str
    decision: str  # approve | reject | request_changes
    revision: int
    comment: str
    selected_option: str
    created_at: str

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> Vote:
        return cls(
            reviewer=data.get("reviewer") or "",
            decision=data["decision"],
            revision=int(data["revision"]),
            comment=data.get("comment") or "",
            selected_option=data.get("selected_option") or "",
            created_at=data.get("created_at") or "",
        )


@dataclass(frozen=True)
class Revision:
    number: int
    kind: str  # submitted | resubmitted | edited (a reviewer's edit-then-approve)
    payload: dict[str, Any]
    author: str
    patch: list[dict[str, Any]]  # RFC 6902 diff from the previous revision
    summary: str
    reason: str

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> Revision:
        return cls(
            number=int(data["number"]),
            kind=data.get("kind") or "",
            payload=data.get("payload") or {},
            author=data.get("author") or "",
            patch=list(data.get("patch") or []),
            summary=data.get("summary") or "",
            reason=data.get("reason") or "",
        )


@dataclass(frozen=True)
class Proposal:
    """A proposal as the server last described it. `decided` once it left the open
    statuses; `approved_payload` is what the humans approved (possibly their edit)."""

    id: str
    checkpoint: str
    title: str
    status: str
    resolution: str
    revision: int
    payload: dict[str, Any]
    approved_payload: dict[str, Any] | None
    selected_option: str
    votes: list[Vote] = field(default_factory=list)
    revisions: list[Revision] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> Proposal:
        return cls(
            id=str(data["id"]),
            checkpoint=data.get("checkpoint") or "",
            title=data.get("title") or "",
            status=data["status"],
            resolution=data.get("resolution") or "",
            revision=int(data.get("revision") or 1),
            payload=data.get("payload") or {},
            approved_payload=data.get("approved_payload"),
            selected_option=data.get("selected_option") or "",
            votes=[Vote.from_api(v) for v in data.get("votes") or []],
            revisions=[Revision.from_api(r) for r in data.get("revisions") or []],
            raw=data,
        )

    @property
    def decided(self) -> bool:
        return self.status not in OPEN_STATUSES

    @property
    def approved(self) -> bool:
        return self.status == "approved"

    @property
    def comments(self) -> list[Vote]:
        """The reviewers' votes that carry a comment, oldest first."""
        return [vote for vote in self.votes if vote.comment]

    @property
    def reason(self) -> str:
        """The comment of the vote that decided the current status ("" when none did: a
        timeout, a policy or a cancel)."""
        wanted = {"rejected": "reject", "changes_requested": "request_changes"}.get(
            self.status, "approve"
        )
        for vote in reversed(self.votes):
            if vote.decision == wanted and vote.comment:
                return vote.comment
        return ""

    @property
    def edits(self) -> list[Revision]:
        """Revisions a reviewer made while approving (edit-then-approve)."""
        return [rev for rev in self.revisions if rev.kind == "edited"]

    @property
    def edit_patch(self) -> list[dict[str, Any]]:
        """The RFC 6902 diff of the reviewers' edits ([] when approved as submitted)."""
        return [op for rev in self.edits for op in rev.patch]

    @property
    def edited(self) -> bool:
        return bool(self.edits)

    def approved_as(self, model: type[M]) -> M:
        """The approved payload parsed into a pydantic model (or any class with
        `model_validate`)."""
        if self.approved_payload is None:
            raise ValueError(f"proposal {self.id} is {self.status}, not approved")
        return model.model_validate(self.approved_payload)  # type: ignore[attr-defined, no-any-return]


@dataclass(frozen=True)
class Checkpoint:
    slug: str
    name: str
    description: str
    timeout_seconds: int | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> Checkpoint:
        return cls(
            slug=data["slug"],
            name=data.get("name") or data["slug"],
            description=data.get("description") or "",
            timeout_seconds=data.get("timeout_seconds"),
            raw=data,
        )


@dataclass(frozen=True)
class Event:
    """One audit event of a proposal."""

    seq: int
    verb: str
    actor: str
    created_at: str
    revision: int | None
    reason: str
    data: dict[str, Any]

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> Event:
        return cls(
            seq=int(data["seq"]),
            verb=data["verb"],
            actor=data.get("actor") or "",
            created_at=data.get("created_at") or "",
            revision=data.get("revision"),
            reason=data.get("reason") or "",
            data=data.get("data") or {},
        )
