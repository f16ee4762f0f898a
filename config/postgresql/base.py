"""Django's PostgreSQL backend, with psycopg's pool checking only connections that sat idle.

With CONN_HEALTH_CHECKS, Django gives the pool psycopg's `check_connection`, which sends an
empty query on every `getconn`: one more round trip on every request, before its first
statement (16.6 % of a submit's wall time in the bench's profile, where the bare baseline
pays none). A connection handed out within the last RECENTLY_USED_SECONDS was working a
moment ago, and the pool has looked at its state on return (a broken or mid-transaction
connection is discarded then); only one that has been idle longer, which a server restart, an
idle timeout or a network cut may have killed meanwhile, is checked before it is handed out.
"""

from __future__ import annotations

from time import monotonic
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db.backends.base.base import NO_DB_ALIAS
from django.db.backends.postgresql import base
from psycopg_pool import ConnectionPool

RECENTLY_USED_SECONDS = 1.0


def check_unless_recently_used(conn: Any) -> None:
    """The pool's `check`: psycopg's own, unless `conn` was handed out just before."""
    now = monotonic()
    if now - getattr(conn, "_nihil_handed_out_at", float("-inf")) > RECENTLY_USED_SECONDS:
        ConnectionPool.check_connection(conn)  # raises if broken: the pool tries another
    conn._nihil_handed_out_at = now


class DatabaseWrapper(base.DatabaseWrapper):
    @property
    def pool(self) -> ConnectionPool | None:
        """Django's pool (django.db.backends.postgresql.base.DatabaseWrapper.pool), built with
        the check above when CONN_HEALTH_CHECKS is on."""
        options = self.settings_dict["OPTIONS"].get("pool")
        if self.alias == NO_DB_ALIAS or not options or not self.settings_dict["CONN_HEALTH_CHECKS"]:
            return super().pool  # type: ignore[misc,no-any-return]  # untyped in the stubs
        # Django's own, one per alias for the process (untyped in the stubs).
        pools: dict[str, ConnectionPool] = getattr(self, "_connection_pools")  # noqa: B009
        if self.alias not in pools:
            if self.settings_dict.get("CONN_MAX_AGE", 0) != 0:
                raise ImproperlyConfigured("Pooling doesn't support persistent connections.")
            connect_kwargs = self.get_connection_params()
            connect_kwargs["autocommit"] = True  # as Django's: it sets autocommit later on
            pools.setdefault(
                self.alias,
                ConnectionPool(
                    kwargs=connect_kwargs,
                    open=False,  # as Django's: not during start-up
                    configure=getattr(self, "_configure_connection"),  # noqa: B009
                    check=check_unless_recently_used,
                    **({} if options is True else options),
                ),
            )
        return pools[self.alias]
