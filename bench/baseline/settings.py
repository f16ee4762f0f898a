"""Settings of the baseline: DEBUG off, nothing installed, the product's psycopg pool sizes."""

from __future__ import annotations

import os

import dj_database_url

DEBUG = False
SECRET_KEY = os.environ["SECRET_KEY"]
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "bench.baseline.urls"
USE_TZ = True
TIME_ZONE = "UTC"
DATABASES = {"default": dj_database_url.parse(os.environ["DATABASE_URL"], conn_max_age=0)}
# The same pool as config.settings.base gives the product (DB_POOL_MIN_SIZE/MAX_SIZE defaults).
DATABASES["default"]["OPTIONS"] = {"pool": {"min_size": 2, "max_size": 10, "timeout": 10.0}}
# The product's database, read by `own_sql` (bench/baseline/views.py): its list page's SQL run
# directly, with nothing of the product around it.
if os.environ.get("BENCH_PRODUCT_DATABASE_URL"):
    DATABASES["product"] = {
        **dj_database_url.parse(os.environ["BENCH_PRODUCT_DATABASE_URL"], conn_max_age=0),
        "OPTIONS": DATABASES["default"]["OPTIONS"],
    }
LOGGING = {"version": 1, "disable_existing_loggers": False}
