"""Base settings, read from environment variables (see README "Configuration").

Defaults give the embedded mode: SQLite in .run/ and a Redis on REDIS_URL (the `up` command
starts one). Production overrides live in config.settings.production.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
import django_stubs_ext
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

from config import redis_clients
from config.env import env_bool, env_float, env_int, env_list, env_str, env_url

# Lets typed code write ModelAdmin[Model], QuerySet[Model] and friends at runtime too.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent.parent
# The install's local state (SQLite file, secret key, embedded Redis, demo logins): `up
# --run-dir` sets NIHIL_RUN_DIR for itself and its children, so everything of one install
# lives in one directory.
RUN_DIR = Path(os.environ.get("NIHIL_RUN_DIR") or BASE_DIR / ".run")

DEBUG = env_bool("DEBUG", False)

# --- secret key: never a constant ------------------------------------------------------------
# Anyone who knows the key can forge sessions and signed e-mail links, so there is no built-in
# fallback. In development (DEBUG) every entry point of an install (manage.py, uvicorn, celery)
# shares the random key `up` keeps in RUN_DIR/secret_key, created on first use (mode 600).
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Export a random value of 50+ characters, e.g. "
            "SECRET_KEY=$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))'); "
            f"for local development, DEBUG=true uses this install's own key ({RUN_DIR}/"
            "secret_key, the one `manage.py up` keeps)."
        )
    from hitl.embedded import load_or_create_secret_key  # no Django imports: safe here

    SECRET_KEY = load_or_create_secret_key(RUN_DIR / "secret_key")
if len(SECRET_KEY) < 32:
    raise ImproperlyConfigured("SECRET_KEY must be at least 32 characters long.")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "guardian",
    "simple_history",
    "channels",
    "audit",
    "proposals",
    "notifications",
    "hitl",
    "hitl.ops",  # health, metrics, override-rate alert (README "For operators")
]

MIDDLEWARE = [
    "hitl.ops.metrics.RequestMetricsMiddleware",  # first: times everything below it
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "simple_history.middleware.HistoryRequestMiddleware",
]

# Left out of API-key calls (`Authorization: Bearer` to /api/v1/): the key is the caller, the
# session cookie is never read, and no cross-site form can send that header (hitl.asgi).
API_KEY_CALL_SKIPS_MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = env_url(
    "DATABASE_URL",
    f"sqlite:///{RUN_DIR / 'db.sqlite3'}",
    schemes=("sqlite", "postgres", "postgresql", "pgsql"),
)
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # Embedded mode: writers queue on the database lock instead of failing with
    # "database is locked"; IMMEDIATE takes the write lock at BEGIN so a transaction never
    # has to upgrade a read lock (the classic SQLite deadlock).
    DATABASES["default"]["OPTIONS"] = {"timeout": 30, "transaction_mode": "IMMEDIATE"}
else:
    # --- PostgreSQL: a connection pool ------------------------------------------------------
    # Under ASGI every concurrent request runs in its own thread, and a persistent
    # connection per thread exhausted max_connections ("too many clients already" at 20
    # concurrent requests). psycopg's pool bounds each process to DB_POOL_MAX_SIZE
    # connections; requests beyond that wait up to DB_POOL_TIMEOUT seconds for one.
    # Django's backend, with a transaction's BEGIN sent with its first statement, and the pool
    # checking only connections idle for a while (config/postgresql: no round trip of their
    # own on every transaction and every request).
    DATABASES["default"]["ENGINE"] = "config.postgresql"
    DATABASES["default"]["CONN_MAX_AGE"] = env_int("DB_CONN_MAX_AGE", 0, minimum=0)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    # The audit append and the statements sent with it, prepared once per connection (PREPARE
    # / EXECUTE): off behind a pooler that hands a session's statements to other server
    # connections (PgBouncer in transaction mode).
    DB_PREPARED_STATEMENTS = env_bool("DB_PREPARED_STATEMENTS", True)
    DB_POOL = env_bool("DB_POOL", True)
    if DB_POOL:
        if DATABASES["default"]["CONN_MAX_AGE"]:
            raise ImproperlyConfigured(
                "DB_CONN_MAX_AGE must be 0 with the connection pool (the pool keeps the "
                "connections); set DB_POOL=false to use persistent connections instead."
            )
        DB_POOL_MIN_SIZE = env_int("DB_POOL_MIN_SIZE", 2, minimum=0)
        DB_POOL_MAX_SIZE = env_int("DB_POOL_MAX_SIZE", 10, minimum=1)
        if DB_POOL_MIN_SIZE > DB_POOL_MAX_SIZE:
            raise ImproperlyConfigured(
                f"DB_POOL_MIN_SIZE={DB_POOL_MIN_SIZE} is above DB_POOL_MAX_SIZE={DB_POOL_MAX_SIZE}."
            )
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": DB_POOL_MIN_SIZE,
            "max_size": DB_POOL_MAX_SIZE,
            "timeout": env_float("DB_POOL_TIMEOUT", 10.0, minimum=0.1),
        }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_url("REDIS_URL", "redis://127.0.0.1:6379/0", schemes=("redis", "rediss", "unix"))

# --- Redis: every client waits a bounded time -------------------------------------------------
# A frozen Redis (a network partition, a full server) accepts connections and never answers;
# without a socket timeout every request hung on the rate-limit lookup for minutes. Each
# client (cache, throttles, heartbeats, Celery publish, channel layer, beat's leader lock)
# gives up after these many seconds and takes its "Redis unavailable" path.
REDIS_CONNECT_TIMEOUT = env_float("REDIS_CONNECT_TIMEOUT", 0.5, minimum=0.01)
REDIS_SOCKET_TIMEOUT = env_float("REDIS_SOCKET_TIMEOUT", 0.5, minimum=0.01)
REDIS_TIMEOUTS = redis_clients.Timeouts(connect=REDIS_CONNECT_TIMEOUT, socket=REDIS_SOCKET_TIMEOUT)
CACHES = {"default": redis_clients.cache_config(REDIS_URL, REDIS_TIMEOUTS)}
CHANNEL_LAYERS = {"default": redis_clients.channel_layer_config(REDIS_URL, REDIS_TIMEOUTS)}
# Websockets ride Redis pub/sub (notifications.live.LiveChannelLayer): one publish per group,
# fanned out in each web process, so no shared per-process list with a capacity of 100 drops
# messages. A socket may fall HITL_LIVE_SOCKET_BACKLOG messages behind before its backlog is
# dropped (logged, counted) and replayed from the live stream, which keeps the last
# HITL_LIVE_REPLAY_MESSAGES events for sockets that resume after a `seq`.
HITL_LIVE_SOCKET_BACKLOG = env_int("HITL_LIVE_SOCKET_BACKLOG", 1000, minimum=10)
HITL_LIVE_REPLAY_MESSAGES = env_int("HITL_LIVE_REPLAY_MESSAGES", 10000, minimum=100)
CHANNEL_LAYERS["default"]["BACKEND"] = "notifications.live.LiveChannelLayer"
CHANNEL_LAYERS["default"]["CONFIG"]["backlog"] = HITL_LIVE_SOCKET_BACKLOG

AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
ANONYMOUS_USER_NAME = None  # guardian: no anonymous user row; anonymous callers see nothing
GUARDIAN_RAISE_403 = False

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = RUN_DIR / "static"
WHITENOISE_USE_FINDERS = DEBUG
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "queue"
LOGOUT_REDIRECT_URL = "login"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "hitl.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["hitl.api.parsers.StrictJSONParser"],
    "DEFAULT_SCHEMA_CLASS": "hitl.api.schema.APIAutoSchema",  # documents the error responses
    "EXCEPTION_HANDLER": "hitl.api.errors.exception_handler",
    "DEFAULT_THROTTLE_CLASSES": [
        "hitl.api.throttling.AnonThrottle",
        "hitl.api.throttling.UserThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env_str("API_THROTTLE_ANON", "60/minute"),
        "user": env_str("API_THROTTLE_USER", "6000/minute"),
    },
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Nihil Obstat API",
    "DESCRIPTION": "Human sign-off for AI actions.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
}

# Product knobs.
HITL_WAIT_MAX_SECONDS = env_int("HITL_WAIT_MAX_SECONDS", 60, minimum=1)
HITL_CLAIM_SECONDS = env_int("HITL_CLAIM_SECONDS", 900, minimum=30)
HITL_BULK_MAX = env_int("HITL_BULK_MAX", 500, minimum=1)
HITL_PAGE_SIZE = env_int("HITL_PAGE_SIZE", 50, minimum=1)
HITL_SWEEP_INTERVAL_SECONDS = env_int("HITL_SWEEP_INTERVAL_SECONDS", 15, minimum=1)
HITL_HEARTBEAT_STALE_SECONDS = env_int("HITL_HEARTBEAT_STALE_SECONDS", 120, minimum=10)
# Development mode: approve review items left this many seconds (0 = off). Never in
# production: refused unless DEBUG is on.
HITL_DEV_AUTO_APPROVE_SECONDS = env_int("HITL_DEV_AUTO_APPROVE_SECONDS", 0, minimum=0)
if HITL_DEV_AUTO_APPROVE_SECONDS and not DEBUG:
    raise ImproperlyConfigured(
        "HITL_DEV_AUTO_APPROVE_SECONDS is a development setting: DEBUG is off."
    )

# Delivery (notifications app).
HITL_SECRETS_KEY = env_str("HITL_SECRETS_KEY", "")
HITL_PUBLIC_URL = env_str("HITL_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")
HITL_WEBHOOK_TIMEOUT_SECONDS = env_int("HITL_WEBHOOK_TIMEOUT_SECONDS", 15, minimum=1)
# Webhook targets in these networks are allowed even though they are private/loopback
# (e.g. "127.0.0.0/8" for a receiver on the same host). Empty: only public addresses.
HITL_WEBHOOK_ALLOWED_NETWORKS = env_list("HITL_WEBHOOK_ALLOWED_NETWORKS", [])
HITL_WEBHOOK_MAX_ATTEMPTS = env_int("HITL_WEBHOOK_MAX_ATTEMPTS", 15, minimum=1)
HITL_EMAIL_DIGEST_MINUTES = env_int("HITL_EMAIL_DIGEST_MINUTES", 15, minimum=1)
HITL_EMAIL_LINK_MAX_AGE_HOURS = env_int("HITL_EMAIL_LINK_MAX_AGE_HOURS", 72, minimum=1)
HITL_RELAY_INTERVAL_SECONDS = env_int("HITL_RELAY_INTERVAL_SECONDS", 30, minimum=1)
# Web processes (config.asgi) kick the relay from a thread of their own after a commit,
# not in the request (notifications.kicks).
HITL_RELAY_KICKS_IN_BACKGROUND = True
HITL_LIVE_SEND_TIMEOUT_SECONDS = env_int("HITL_LIVE_SEND_TIMEOUT_SECONDS", 2, minimum=1)

CELERY_BROKER_URL = REDIS_URL
CELERY_TASK_IGNORE_RESULT = True
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TIMEZONE = "UTC"
# Tasks are idempotent (they take ids and re-read state), so a task whose worker died is
# redelivered rather than lost: ack after the run, requeue when the worker process is lost.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 240, minimum=1)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 300, minimum=1)
# Visibility timeout and bounded publishing: see redis_clients.broker_transport_options.
CELERY_BROKER_TRANSPORT_OPTIONS = redis_clients.broker_transport_options(REDIS_TIMEOUTS)
CELERY_BROKER_CONNECTION_TIMEOUT = REDIS_CONNECT_TIMEOUT
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULER = "hitl.beat:LeaderScheduler"
CELERY_BEAT_MAX_LOOP_INTERVAL = 5  # the leader lock is renewed at least this often
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {
    # Sweeps are safe to run twice at once (SKIP LOCKED), so a plain interval is fine here.
    "hitl-sweep": {"task": "hitl.tasks.sweep", "schedule": HITL_SWEEP_INTERVAL_SECONDS},
    "hitl-heartbeat": {"task": "hitl.tasks.heartbeat", "schedule": 30.0},
    # Safety nets: relays whose on-commit kick was lost, and webhook retries coming due.
    "notifications-relay": {
        "task": "notifications.tasks.relay_outbox",
        "schedule": HITL_RELAY_INTERVAL_SECONDS,
    },
    "notifications-webhooks-due": {
        "task": "notifications.tasks.deliver_due_webhooks",
        "schedule": 10.0,
    },
    "notifications-digests": {"task": "notifications.tasks.send_digests", "schedule": 60.0},
    # Housekeeping runs at a fixed wall-clock time, which restarts do not shift.
    "hitl-purge-idempotency": {
        "task": "hitl.tasks.purge_idempotency_records",
        "schedule": crontab(minute=17, hour=3),
    },
}
HITL_IDEMPOTENCY_TTL_HOURS = env_int("HITL_IDEMPOTENCY_TTL_HOURS", 72, minimum=1)
# How long a process trusts a verified API key and its grants (hitl/authentication.py).
HITL_AUTH_CACHE_SECONDS = env_float("HITL_AUTH_CACHE_SECONDS", 5.0, minimum=0.0)
# Audited writers on different chains never wait for each other (audit/services.py).
HITL_AUDIT_CHAINS = env_int("HITL_AUDIT_CHAINS", 16, minimum=1)

EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "nihil-obstat@localhost")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        # One line per task received/succeeded drowns everything else; failures still log.
        "celery.app.trace": {"level": env_str("CELERY_TASK_LOG_LEVEL", "WARNING")},
        "celery.worker.strategy": {"level": env_str("CELERY_TASK_LOG_LEVEL", "WARNING")},
    },
}

# --- Web UI: static files, Content-Security-Policy, login lockout (issue 8) ----------------
# Front-end assets are vendored under static/ (static/vendor/README.md): nothing from a CDN,
# so every page of ours runs under a policy that allows only this origin and no inline code.
STATICFILES_DIRS = [BASE_DIR / "static"]
INSTALLED_APPS += ["csp", "axes"]
# django-csp's, skipped for JSON responses (the API's): see hitl.csp.
MIDDLEWARE.insert(
    MIDDLEWARE.index("whitenoise.middleware.WhiteNoiseMiddleware"), "hitl.csp.DocumentCSPMiddleware"
)
# Last, as django-axes requires: it turns a lockout raised during authentication into a page.
MIDDLEWARE.append("axes.middleware.AxesMiddleware")
CONTENT_SECURITY_POLICY = {
    # The admin and Swagger UI are third-party pages with inline scripts and styles; every
    # other page (queue, proposal, dashboard, connect, login, email links) gets the strict one.
    "EXCLUDE_URL_PREFIXES": ["/admin/", "/api/docs/"],
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        # 'self' covers same-host ws:/wss: in CSP Level 3 (the queue's live socket).
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    },
}
# Brute-force lockout (django-axes): after AXES_FAILURE_LIMIT failed logins for one
# username from one address, that pair is locked for AXES_COOLOFF_MINUTES.
AUTHENTICATION_BACKENDS.insert(0, "hitl.lockout.AxesBackend")
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("AXES_COOLOFF_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_VERBOSE = False
LOGGING["loggers"]["axes"] = {"level": "WARNING"}  # type: ignore[index]  # one line per login otherwise
# Days of decided history `seed_demo` generates for the dashboard (hitl.demo_history); 0: none.
HITL_DEMO_HISTORY_DAYS = env_int("HITL_DEMO_HISTORY_DAYS", 21, minimum=0)

# --- Operations: health, Prometheus metrics, the override-rate alert (hitl.ops, issue 11) ----
# /metrics is off (404) until one of these is set: a bearer token the scraper sends, and/or
# the networks it scrapes from (REMOTE_ADDR: behind a proxy, the proxy's address).
HITL_METRICS_TOKEN = env_str("HITL_METRICS_TOKEN", "")
HITL_METRICS_ALLOWED_NETWORKS = env_list("HITL_METRICS_ALLOWED_NETWORKS", [])
HITL_READYZ_TIMEOUT_SECONDS = env_float("HITL_READYZ_TIMEOUT_SECONDS", 2.0, minimum=0.1)
HITL_OVERRIDE_WINDOW = env_int("HITL_OVERRIDE_WINDOW", 200, minimum=1)
HITL_OVERRIDE_THRESHOLD = env_float("HITL_OVERRIDE_THRESHOLD", 0.15, minimum=0.0)
HITL_OVERRIDE_MIN_DECISIONS = env_int("HITL_OVERRIDE_MIN_DECISIONS", 20, minimum=1)
# Load balancers and Prometheus talk plain http to the web processes: the probes and the
# scrape are never redirected to https (production's SECURE_SSL_REDIRECT).
SECURE_REDIRECT_EXEMPT = [r"^(healthz|readyz|metrics)$"]
HITL_OVERRIDE_EVALUATE_SECONDS = env_int("HITL_OVERRIDE_EVALUATE_SECONDS", 600, minimum=10)
CELERY_BEAT_SCHEDULE["ops-override-rates"] = {
    "task": "hitl.ops.tasks.evaluate_override_rates",
    "schedule": float(HITL_OVERRIDE_EVALUATE_SECONDS),
}
