"""Test settings: PostgreSQL and Redis, as production runs them (README "Tests")."""

from __future__ import annotations

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("SECRET_KEY", "test-secret-key-that-is-long-enough-0123456789")
# Seeding makes no weeks of demo history (minutes of services calls) unless a test asks for
# it; subprocesses (`up`, servers) inherit the environment and skip it too.
os.environ.setdefault("HITL_DEMO_HISTORY_DAYS", "0")

from config.settings.base import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast user factories
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
# The pytest process imports config.asgi (websocket tests): its kicks stay in the committing
# thread, so a test sees them at commit. Servers that tests start use the base settings.
HITL_RELAY_KICKS_IN_BACKGROUND = False
REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] = {"anon": "100000/minute", "user": "100000/minute"}  # noqa: F405

# One test database per pytest process, so concurrent runs (developers, CI, parallel helpers)
# never drop each other's database. pytest-django creates and destroys it around the run.
DATABASES["default"]["TEST"] = {"NAME": f"test_nihil_{os.getpid()}"}  # noqa: F405
# Connections opened in worker threads (Channels' database_sync_to_async, thread-based race
# tests) are closed after each use, so none outlives the run and blocks dropping the database.
DATABASES["default"]["CONN_MAX_AGE"] = 0  # noqa: F405
# The pytest process itself connects without psycopg's pool, so each thread's connection is
# really closed after use (above). Servers that tests start as subprocesses with the base
# settings use the pool, as production does (tests/hitl/test_db_pool_load.py).
DATABASES["default"].get("OPTIONS", {}).pop("pool", None)  # noqa: F405
