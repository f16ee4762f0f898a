"""Demo data: the three example checkpoints, a quick-timeout one, people, an agent, proposals.

Idempotent: checkpoints, users and groups are found by name, proposals by their demo
`external_id`, so a second run adds nothing. Secrets are generated once and kept beside the
credentials file (mode 600), so `manage.py up` shows the same ones on every start:
- the demo agent's API key (only its hash is in the database, so the token itself is kept in
  the key file); an agent configured with it keeps working across restarts. A new key (the
  old one revoked) only with --rotate-key, or when the kept one no longer works;
- passwords are generated only for users this run creates (or all with --reset-passwords).

`--proposals N` adds N generated proposals with decided history (hitl/demo_bulk.py: the one
place history is written in bulk, by COPY, not through the services one by one).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from guardian.shortcuts import assign_perm

from hitl import demo_bulk, demo_history
from hitl.keys import api_key_create, api_key_find, api_key_revoke, service_account_create
from hitl.management.progress import Progress, add_progress_argument, refuse
from hitl.models import ApiKey, ServiceAccount
from proposals import permissions, services
from proposals.models import Checkpoint, Proposal

AGENT = "demo-agent"
AGENT_KEY_NAME = "demo"
DEMO_PREFIX = "demo-"  # external_id prefix of seeded proposals
MANAGERS_GROUP = "managers"

# Model-level view permissions so staff reviewers and the manager can open the admin pages.
STAFF_VIEW_PERMS = (
    "proposals.view_checkpoint",
    "proposals.view_proposal",
    "proposals.view_revision",
    "proposals.view_vote",
    "audit.view_auditevent",
)

CHECKPOINTS: dict[str, dict[str, Any]] = {
    "inspection-schedule": {
        "name": "Inspection schedule",
        "description": (
            "Environmental agency: the model proposes which sites to inspect and how often; "
            "one inspector signs the schedule off."
        ),
        "quorum_rule": "any",
        "quorum_count": 1,
    },
    "policy-change": {
        "name": "Policy change",
        "description": (
            "Financial regulator: proposed changes to supervisory policy need two analysts' "
            "approval; any analyst can veto."
        ),
        "quorum_rule": "count",
        "quorum_count": 2,
        "veto": True,
    },
    "data-purchase": {
        "name": "Data purchase",
        "description": (
            "Lead generation: small purchases pass by policy; anything over 100 (currency) or "
            "over 1000 businesses needs two buyers, and is rejected after a day without them."
        ),
        "review_when": [
            {"path": "cost", "op": "gt", "value": 100},
            {"path": "businesses", "op": "gt", "value": 1000},
        ],
        "auto_approve_at": 0.0,
        "quorum_rule": "count",
        "quorum_count": 2,
        "timeout_seconds": 86400,
        "timeout_action": "reject",
    },
    "demo-quick-timeout": {
        "name": "Demo: quick timeout",
        "description": (
            "Demo only: proposals here time out (rejected) two minutes after submission "
            "unless an inspector decides first."
        ),
        "quorum_rule": "any",
        "quorum_count": 1,
        "timeout_seconds": 120,
        "timeout_action": "reject",
    },
}

# group -> (checkpoints it reviews, its members)
REVIEWER_GROUPS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "inspectors": (("inspection-schedule", "demo-quick-timeout"), ("ingrid", "ivan")),
    "analysts": (("policy-change",), ("alma", "arto", "asha")),
    "buyers": (("data-purchase",), ("bruno", "bianca")),
}


@dataclass(frozen=True)
class DemoVote:
    reviewer: str
    decision: str
    comment: str = ""
    selected_option: str = ""


@dataclass(frozen=True)
class DemoProposal:
    key: str  # becomes external_id "demo-<key>"
    checkpoint: str
    data: dict[str, Any]
    votes: tuple[DemoVote, ...] = ()


PROPOSALS: tuple[DemoProposal, ...] = (
    DemoProposal(
        "riverside-tannery",
        "inspection-schedule",
        {
            "title": "Inspect Riverside tannery monthly",
            "summary": "Chromium readings downstream rose three months in a row.",
            "payload": {"site": "Riverside tannery", "visits_per_year": 12, "focus": "effluent"},
            "confidence": 0.82,
            "priority": "high",
            "region": "North",
            "labels": {"sector": "leather"},
            "context": {"explanation": "Downstream Cr(VI) above threshold in 3 of 3 samples."},
        },
    ),
    DemoProposal(
        "northgate-landfill",
        "inspection-schedule",
        {
            "title": "Inspect Northgate landfill quarterly",
            "payload": {"site": "Northgate landfill", "visits_per_year": 4, "focus": "leachate"},
            "confidence": 0.74,
            "region": "North",
            "labels": {"sector": "waste"},
        },
        votes=(DemoVote("ingrid", "approve", "Matches last year's findings."),),
    ),
    DemoProposal(
        "lakeside-cadence",
        "inspection-schedule",
        {
            "title": "Choose an inspection cadence for Lakeside chemical plant",
            "summary": "The model is unsure between three cadences; pick one.",
            "payload": {"site": "Lakeside chemical plant"},
            "options": [
                {
                    "key": "monthly",
                    "label": "Monthly",
                    "payload": {"site": "Lakeside chemical plant", "visits_per_year": 12},
                    "confidence": 0.41,
                },
                {
                    "key": "quarterly",
                    "label": "Quarterly",
                    "payload": {"site": "Lakeside chemical plant", "visits_per_year": 4},
                    "confidence": 0.39,
                },
                {
                    "key": "yearly",
                    "label": "Yearly",
                    "payload": {"site": "Lakeside chemical plant", "visits_per_year": 1},
                    "confidence": 0.2,
                },
            ],
            "region": "South",
            "labels": {"sector": "chemicals"},
        },
    ),
    DemoProposal(
        "reporting-threshold",
        "policy-change",
        {
            "title": "Raise the reporting threshold for small lenders",
            "summary": "From 1M to 2.5M in quarterly loan volume.",
            "payload": {"rule": "reporting-threshold", "from": 1_000_000, "to": 2_500_000},
            "confidence": 0.67,
            "priority": "high",
            "impact": Decimal("2500000"),
            "labels": {"area": "reporting"},
        },
        votes=(DemoVote("alma", "approve", "Burden reduction is justified."),),
    ),
    DemoProposal(
        "capital-buffer",
        "policy-change",
        {
            "title": "Tighten capital buffer guidance for regional banks",
            "payload": {"rule": "capital-buffer", "buffer_pct": 3.5, "phase_in_months": 6},
            "confidence": 0.58,
            "labels": {"area": "prudential"},
        },
        votes=(
            DemoVote(
                "arto",
                "request_changes",
                "Six months is too short a phase-in; model twelve and resubmit.",
            ),
        ),
    ),
    DemoProposal(
        "aml-monitoring",
        "policy-change",
        {
            "title": "Monitor AML alerts weekly instead of monthly",
            "payload": {"rule": "aml-monitoring", "interval_days": 7},
            "confidence": 0.71,
            "priority": "low",
            "labels": {"area": "aml"},
        },
    ),
    DemoProposal(
        "bakeries-lyon",
        "data-purchase",
        {
            "title": "Buy 250 bakery leads in Lyon",
            "payload": {"vendor": "LeadCo", "segment": "bakeries", "cost": 40, "businesses": 250},
            "confidence": 0.9,
            "impact": Decimal("40"),
            "region": "FR",
        },
    ),
    DemoProposal(
        "florists-berlin",
        "data-purchase",
        {
            "title": "Buy 600 florist leads in Berlin",
            "payload": {"vendor": "LeadCo", "segment": "florists", "cost": 90, "businesses": 600},
            "confidence": 0.86,
            "impact": Decimal("90"),
            "region": "DE",
        },
    ),
    DemoProposal(
        "restaurants-eu",
        "data-purchase",
        {
            "title": "Buy 5,000 restaurant leads across the EU",
            "payload": {
                "vendor": "DataMart",
                "segment": "restaurants",
                "cost": 450,
                "businesses": 5000,
            },
            "confidence": 0.77,
            "priority": "high",
            "impact": Decimal("450"),
            "region": "EU",
        },
    ),
    DemoProposal(
        "garages-madrid",
        "data-purchase",
        {
            "title": "Buy 1,200 garage leads in Madrid",
            "payload": {"vendor": "LeadCo", "segment": "garages", "cost": 80, "businesses": 1200},
            "confidence": 0.81,
            "impact": Decimal("80"),
            "region": "ES",
        },
    ),
    DemoProposal(
        "consumer-emails",
        "data-purchase",
        {
            "title": "Buy 20,000 consumer e-mail addresses",
            "payload": {
                "vendor": "BulkList",
                "segment": "consumers",
                "cost": 300,
                "businesses": 0,
            },
            "confidence": 0.63,
            "impact": Decimal("300"),
        },
        votes=(DemoVote("bruno", "reject", "We only buy business data; consent is unclear."),),
    ),
    DemoProposal(
        "staging-cache",
        "demo-quick-timeout",
        {
            "title": "Flush the staging cache (times out two minutes after seeding)",
            "payload": {"action": "flush", "target": "staging-cache"},
            "confidence": 0.5,
            "priority": "critical",
        },
    ),
)


@dataclass
class Login:
    username: str
    role: str
    password: str | None  # None: an existing user whose password this run does not know


@dataclass
class SeedResult:
    api_key: str
    logins: list[Login]
    credentials_file: Path | None
    created: dict[str, int] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "api_key": self.api_key,
            "agent": AGENT,
            "logins": [vars(login) for login in self.logins],
            "credentials_file": str(self.credentials_file) if self.credentials_file else None,
            "created": self.created,
            "totals": self.totals,
        }


def _new_password() -> str:
    return secrets.token_urlsafe(12)  # 16 characters, ~96 bits


def read_credential_rows(path: Path | None) -> list[Login]:
    """The logins saved by an earlier run, in file order."""
    if path is None or not path.exists():
        return []
    rows: list[Login] = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) >= 2:
            rows.append(Login(username=parts[0], password=parts[1], role="\t".join(parts[2:])))
    return rows


def read_credentials(path: Path | None) -> dict[str, str]:
    """username -> password from a credentials file written by an earlier run."""
    return {row.username: row.password for row in read_credential_rows(path) if row.password}


def write_credentials(path: Path, logins: list[Login], known: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Nihil Obstat demo logins (username, password, role). Generated by seed_demo;",
        "# change the passwords before using this install for anything real.",
    ]
    for login in logins:
        password = login.password or known.get(login.username)
        if password:
            lines.append(f"{login.username}\t{password}\t{login.role}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    os.chmod(path, 0o600)


def _perms(names: tuple[str, ...]) -> list[Permission]:
    found = []
    for name in names:
        app_label, codename = name.split(".")
        found.append(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return found


class _Seeder:
    def __init__(self, *, reset_passwords: bool, known: dict[str, str]) -> None:
        self.User = get_user_model()
        self.reset_passwords = reset_passwords
        self.known = known
        self.created = {"checkpoints": 0, "users": 0, "proposals": 0}
        self.logins: list[Login] = []

    def user(self, username: str, role: str, *, superuser: bool = False, staff: bool = True) -> Any:
        user = self.User.objects.filter(username=username).first()
        password: str | None = None
        if user is None:
            password = _new_password()
            if superuser:
                user = self.User.objects.create_superuser(
                    username=username, email=f"{username}@example.test", password=password
                )
            else:
                user = self.User.objects.create_user(
                    username=username,
                    email=f"{username}@example.test",
                    password=password,
                    is_staff=staff,
                )
            self.created["users"] += 1
        elif self.reset_passwords:
            password = _new_password()
            user.set_password(password)
            user.save(update_fields=["password"])
        self.logins.append(
            Login(username=username, role=role, password=password or self.known.get(username))
        )
        return user

    def checkpoints(self) -> dict[str, Checkpoint]:
        found: dict[str, Checkpoint] = {}
        for slug, fields in CHECKPOINTS.items():
            # Defaults only: a manager's later edits to a demo checkpoint survive a re-seed.
            checkpoint, created = Checkpoint.objects.get_or_create(slug=slug, defaults=fields)
            if created:
                checkpoint.full_clean()
                self.created["checkpoints"] += 1
            found[slug] = checkpoint
        return found

    def people(self, checkpoints: dict[str, Checkpoint]) -> Any:
        self.user("admin", "superuser", superuser=True)
        manager = self.user("manager", "manager: manages every checkpoint")
        # The manager role: manage_checkpoint model-wide (every checkpoint, adding new ones)
        # is all the admin asks for (proposals.admin.CheckpointAdmin).
        managers, _ = Group.objects.get_or_create(name=MANAGERS_GROUP)
        managers.permissions.add(*_perms((f"proposals.{permissions.MANAGE}", *STAFF_VIEW_PERMS)))
        manager.groups.add(managers)

        view_perms = _perms(STAFF_VIEW_PERMS)
        for group_name, (slugs, members) in REVIEWER_GROUPS.items():
            group, _ = Group.objects.get_or_create(name=group_name)
            group.permissions.add(*view_perms)
            for slug in slugs:
                assign_perm(permissions.REVIEW, group, checkpoints[slug])
            for username in members:
                reviewer = self.user(username, f"reviewer ({group_name}: {', '.join(slugs)})")
                reviewer.groups.add(group)

        agent = self.User.objects.filter(username=AGENT).first()
        if agent is None:
            agent = service_account_create(
                username=AGENT, description="Demo agent that submits the example proposals."
            )
            self.created["users"] += 1
        elif not ServiceAccount.objects.filter(user=agent).exists():
            raise CommandError(f"User {AGENT!r} exists but is not a service account.")
        for checkpoint in checkpoints.values():
            assign_perm(permissions.SUBMIT, agent, checkpoint)
        return agent

    def proposals(self, agent: Any, checkpoints: dict[str, Checkpoint]) -> None:
        existing = set(
            Proposal.objects.filter(
                submitted_by=agent, external_id__startswith=DEMO_PREFIX
            ).values_list("external_id", flat=True)
        )
        for demo in PROPOSALS:
            external_id = DEMO_PREFIX + demo.key
            if external_id in existing:
                continue
            proposal = services.proposal_submit(
                submitter=agent,
                checkpoint=checkpoints[demo.checkpoint],
                data=services.ProposalInput(external_id=external_id, **demo.data),
            )
            self.created["proposals"] += 1
            for vote in demo.votes:
                services.vote_cast(
                    proposal_id=proposal.pk,
                    reviewer=self.User.objects.get(username=vote.reviewer),
                    decision=vote.decision,
                    revision=proposal.revision,
                    comment=vote.comment,
                    selected_option=vote.selected_option,
                )

    def api_key(self, agent: Any, *, kept: str, rotate: bool) -> str:
        """The kept demo key while it still works, else a new one (earlier demo keys revoked)."""
        if kept and not rotate:
            found = api_key_find(kept)
            if found is not None and found.user_id == agent.pk and found.name == AGENT_KEY_NAME:
                return kept
        for old in ApiKey.objects.filter(user=agent, name=AGENT_KEY_NAME, revoked_at__isnull=True):
            api_key_revoke(api_key=old, revoked_by=None)
        return api_key_create(user=agent, name=AGENT_KEY_NAME).token


def read_api_key(path: Path | None) -> str:
    try:
        return path.read_text().strip() if path is not None else ""
    except FileNotFoundError:
        return ""


def write_api_key(path: Path, token: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    os.chmod(path, 0o600)


def seed_demo(
    *,
    credentials_file: Path | None,
    reset_passwords: bool = False,
    api_key_file: Path | None = None,
    rotate_key: bool = False,
    bulk_proposals: int = 0,
    workers: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> SeedResult:
    """Create (or complete) the demo data; keep the demo API key in `api_key_file` (a new one
    when there is none that works, or with `rotate_key`)."""
    known = read_credentials(credentials_file)
    kept = read_api_key(api_key_file)
    seeder = _Seeder(reset_passwords=reset_passwords, known=known)
    with transaction.atomic():
        checkpoints = seeder.checkpoints()
        agent = seeder.people(checkpoints)
        seeder.proposals(agent, checkpoints)
        demo_history.generate(agent=agent)  # weeks of decided history for the dashboard
        token = seeder.api_key(agent, kept=kept, rotate=rotate_key)
    if credentials_file is not None:
        write_credentials(credentials_file, seeder.logins, known)
    if api_key_file is not None and token != kept:
        write_api_key(api_key_file, token)
    if bulk_proposals:
        # After the demo's own transaction: the bulk path commits chunk by chunk, so a large
        # run neither holds one huge transaction nor the audit chain for its whole length.
        seeder.created["bulk_proposals"] = demo_bulk.generate(
            agent=agent, count=bulk_proposals, workers=workers, on_progress=on_progress
        )
    return SeedResult(
        api_key=token,
        logins=seeder.logins,
        credentials_file=credentials_file,
        created=seeder.created,
        totals={
            "checkpoints": len(CHECKPOINTS),
            "users": len(seeder.logins) + 1,
            "proposals": Proposal.objects.filter(external_id__startswith=DEMO_PREFIX).count(),
            "bulk_proposals": demo_bulk.existing(),
        },
    )


def default_credentials_file() -> Path:
    run_dir = getattr(settings, "RUN_DIR", Path(settings.BASE_DIR) / ".run")
    return Path(run_dir) / "demo-credentials.txt"


def _is_production() -> bool:
    return str(getattr(settings, "SETTINGS_MODULE", "")).endswith(".production")


class Command(BaseCommand):
    help = (
        "Load demo data: the example checkpoints (inspection-schedule, policy-change, "
        "data-purchase, demo-quick-timeout), reviewers, a manager, an admin, the demo-agent "
        "service account, a dozen proposals and HITL_DEMO_HISTORY_DAYS of decided history. "
        "Safe to re-run (adds only what is missing); prints the logins and the demo API key, "
        "which is kept across runs. --proposals N adds N generated proposals with their "
        "votes, history, outbox and audit events, written in bulk (the one place history is "
        "written in bulk; 100,000 in about a minute on PostgreSQL). "
        "Exit codes: 0 seeded, 2 refused (production settings without --force, bad arguments)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--credentials-file",
            type=Path,
            default=None,
            help="where generated passwords are kept (default: .run/demo-credentials.txt)",
        )
        parser.add_argument(
            "--api-key-file",
            type=Path,
            default=None,
            help="where the demo agent's API key is kept (default: demo-api-key beside the "
            "credentials file)",
        )
        parser.add_argument(
            "--rotate-key",
            action="store_true",
            help="revoke the kept demo API key and create a new one",
        )
        parser.add_argument(
            "--reset-passwords",
            action="store_true",
            help="give every demo login a new random password",
        )
        parser.add_argument(
            "--json", action="store_true", help="print a JSON summary (for `manage.py up`)"
        )
        parser.add_argument(
            "--force", action="store_true", help="seed even with the production settings"
        )
        parser.add_argument(
            "--proposals",
            type=int,
            default=0,
            metavar="N",
            help="also load N generated proposals (numbered bulk-0000001...) with decided "
            "history, written in bulk; a re-run tops up to N",
        )
        parser.add_argument(
            "--workers",
            type=int,
            default=None,
            help="processes writing --proposals in parallel (default: 2 on PostgreSQL with two "
            "cores or more, else 1)",
        )
        add_progress_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        if _is_production() and not options["force"]:
            raise refuse(
                "Refusing to load demo users into a production install (they come with "
                "known logins). Pass --force if you really mean it."
            )
        if options["proposals"] < 0:
            raise refuse("--proposals must be 0 or more.")
        if options["workers"] is not None and options["workers"] < 1:
            raise refuse("--workers must be 1 or more.")
        credentials_file = options["credentials_file"] or default_credentials_file()
        wanted = options["proposals"]
        total = max(0, wanted - demo_bulk.existing()) if wanted else 0
        # No bar at all when there is nothing to count (a plain re-seed).
        shown = options if total else {**options, "no_progress": True}
        with Progress(self, shown, total=total, desc="proposals") as bar:
            result = seed_demo(
                credentials_file=credentials_file,
                reset_passwords=options["reset_passwords"],
                api_key_file=options["api_key_file"] or credentials_file.parent / "demo-api-key",
                rotate_key=options["rotate_key"],
                bulk_proposals=wanted,
                workers=options["workers"],
                on_progress=bar.update,
            )
        if options["json"]:
            self.stdout.write(json.dumps(result.as_dict()))
            return
        self.stdout.write(self.render(result))

    def render(self, result: SeedResult) -> str:
        created, totals = result.created, result.totals
        lines = [
            self.style.SUCCESS(
                f"Demo data ready: {totals['checkpoints']} checkpoints "
                f"({created['checkpoints']} new), {totals['users']} users "
                f"({created['users']} new), {totals['proposals']} proposals "
                f"({created['proposals']} new)"
                + (
                    f", {totals['bulk_proposals']} bulk proposals "
                    f"({created.get('bulk_proposals', 0)} new)."
                    if totals.get("bulk_proposals")
                    else "."
                )
            ),
            f"Demo logins (kept in {result.credentials_file}, mode 600):",
        ]
        for login in result.logins:
            password = login.password or "(unchanged; see --reset-passwords)"
            lines.append(f"  {login.username:<9} {password:<20} {login.role}")
        lines += [
            f"API key of the service account {AGENT!r} (kept across runs; --rotate-key for a "
            "new one):",
            f"  {result.api_key}",
        ]
        return "\n".join(lines)
