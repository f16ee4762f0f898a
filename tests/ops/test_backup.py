"""Backup and restore with the audit chain, as README "For operators" tells operators:
pg_dump, pg_restore into an empty database, audit_verify and the recorded chain head on the
restored copy (audit_verify's tamper detection itself: tests/audit/test_audit_verify.py)."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from audit.models import AuditEvent
from tests.factories import submit
from tests.processes import BASE_DIR, database_url, subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PYTHON = str(BASE_DIR / ".venv" / "bin" / "python")


def head(url: str) -> tuple[int, str]:
    """Chain 0's last (position, hash): after `audit_anchor` it covers every chain's head."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT chain_seq, hash FROM audit_auditevent WHERE chain = 0 "
            "ORDER BY chain_seq DESC LIMIT 1"
        ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def manage(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    # These commands read only the database: the Redis URL is never contacted.
    env = subprocess_env("redis://127.0.0.1:1/0", DATABASE_URL=url, NIHIL_SKIP_BOOTSTRAP="1")
    return subprocess.run(
        [PYTHON, "manage.py", *args],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def audit_verify(url: str) -> subprocess.CompletedProcess[str]:
    return manage(url, "audit_verify", "--json")


def test_a_restored_backup_verifies_and_keeps_the_recorded_chain_head(
    world: Any, tmp_path: Path
) -> None:
    for n in range(3):
        submit(world.submitter, world.checkpoint, payload={"n": n})
    source = database_url()
    # The README's step: anchor every chain into chain 0 and keep what it prints.
    anchored = manage(source, "audit_anchor")
    assert anchored.returncode == 0, anchored.stdout + anchored.stderr
    recorded = head(source)
    expected = f"chain 0 position {recorded[0]} hash {recorded[1]}"
    assert anchored.stdout.strip() == expected
    events_at_backup = AuditEvent.objects.count()
    dump = tmp_path / "nihil.dump"
    subprocess.run(
        ["pg_dump", "--format=custom", f"--file={dump}", source], check=True, timeout=120
    )

    parts = urlsplit(source)
    name = f"nihil_restore_{uuid.uuid4().hex[:10]}"
    restored = urlunsplit(parts._replace(path=f"/{name}"))
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        subprocess.run(
            ["pg_restore", "--no-owner", f"--dbname={restored}", str(dump)],
            check=True,
            timeout=120,
        )
        # The source moves on after the backup: the restored copy must not.
        submit(world.submitter, world.checkpoint, payload={"n": "after the backup"})
        assert manage(source, "audit_anchor").returncode == 0
        assert head(source)[0] > recorded[0]
        result = audit_verify(restored)
        assert result.returncode == 0, result.stdout + result.stderr
        report = json.loads(result.stdout)
        assert report["checked"] == events_at_backup and report["broken"] == 0
        assert head(restored) == recorded
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
