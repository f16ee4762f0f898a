#!/usr/bin/env python3
"""Django's command-line utility.

Runs with any Python 3.11: when the project's dependencies are not importable it builds
`.venv/` (pip install -e '.[dev]', redone whenever pyproject.toml changes) and re-runs itself
there. That is what lets the README's two commands work on a fresh machine.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".pyproject.sha256"
CLIENT_PYPROJECT = ROOT / "clients" / "python" / "pyproject.toml"
REQUIRED_MODULES = ("django", "rest_framework", "guardian", "simple_history", "celery", "channels")


def _pyproject_digest() -> str:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes())
    digest.update(CLIENT_PYPROJECT.read_bytes())  # the client and its adapters, for tests/clients
    return digest.hexdigest()


def _venv_is_current() -> bool:
    return STAMP.exists() and STAMP.read_text().strip() == _pyproject_digest()


def _build_venv() -> None:
    python = VENV / "bin" / "python"
    if not python.exists():
        print(f"Creating {VENV} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    print("Installing dependencies (pyproject.toml) ...", file=sys.stderr)
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-e",
            f"{ROOT}[dev]",
            "-e",
            f"{CLIENT_PYPROJECT.parent}[webhooks,pydantic,langgraph,openai-agents,mcp]",
        ],
        check=True,
    )
    STAMP.write_text(_pyproject_digest())


def ensure_virtualenv() -> None:
    if os.environ.get("NIHIL_SKIP_BOOTSTRAP") == "1":
        return
    in_venv = Path(sys.prefix).resolve() == VENV.resolve()
    if not in_venv and all(importlib.util.find_spec(m) for m in REQUIRED_MODULES):
        return  # an environment that already has everything (yours, or CI's)
    if not _venv_is_current():
        _build_venv()
    if not in_venv:
        python = VENV / "bin" / "python"
        os.execv(str(python), [str(python), str(ROOT / "manage.py"), *sys.argv[1:]])


def main() -> None:
    ensure_virtualenv()
    # The README's two commands work with no environment at all: `up` gets embedded-mode
    # defaults (DEBUG on, a persisted random SECRET_KEY), `run_tests` the test settings.
    from hitl.embedded import prepare_command_environment

    prepare_command_environment(sys.argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
