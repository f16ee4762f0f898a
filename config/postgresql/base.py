"""Django's PostgreSQL backend, with psycopg's pool checking only connections that sat idle,
and a transaction's BEGIN sent with its first statement.

With CONN_HEALTH_CHECKS, Django gives the pool psycopg's `check_connection`, which sends an
empty query on every `getconn`: one more round trip on every request, before its first
statement (16.6 % of a submit's wall time in the bench's profile, where the bare baseline
pays none). A connection handed out within the last RECENTLY_USED_SECONDS was working a
moment ago, and the pool has looked at its state on return (a broken or mid-transaction
connection is discarded then); only one that has been idle longer, which a server restart, an
idle timeout or a network cut may have killed meanwhile, is checked before it is handed out.

psycopg opens a transaction with a BEGIN of its own, a round trip before the first statement
(a third of a submit's round trips to PostgreSQL). Here psycopg stays in autocommit mode and
the backend tracks Django's: a transaction's BEGIN goes out in front of its first statement,
in the same simple query (client-side binding sends both at once; PostgreSQL runs them one
after the other, as if sent apart). A statement that cannot carry it (executemany, COPY, a
named cursor, a composed query) sends it alone first, as psycopg did. COMMIT and ROLLBACK
are psycopg's, which send nothing when no statement ran: an atomic block that wrote nothing
costs no round trip at all.

A transaction's last statement can also carry its COMMIT (`commit_may_go_with_statement`,
then `committed_by_statement`), when the caller knows nothing runs in the block after it (a
submit's audit append). psycopg's commit then finds no transaction open and sends nothing; a
statement the block still tries to run raises instead of running outside the transaction.

The audit append and the statements sent with it are prepared once per connection
(`DatabaseWrapper.prepared`: PREPARE, then EXECUTE inside the same one-query round trip), so
the server does not parse and plan them at every call.
"""

from __future__ import annotations

import functools
import hashlib
from time import monotonic
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db.backends.base.base import NO_DB_ALIAS
from django.db.backends.postgresql import base
from psycopg import _queries, pq
from psycopg_pool import ConnectionPool

RECENTLY_USED_SECONDS = 1.0
# Statement texts prepared per connection, at most (`DatabaseWrapper.prepared`); past it a
# text goes as it is.
MOST_PREPARED = 64
# Django's backend module, for the names its stubs lack (the psycopg 3 cursors and loaders).
_pg: Any = base


def check_unless_recently_used(conn: Any) -> None:
    """The pool's `check`: psycopg's own, unless `conn` was handed out just before."""
    now = monotonic()
    if now - getattr(conn, "_nihil_handed_out_at", float("-inf")) > RECENTLY_USED_SECONDS:
        ConnectionPool.check_connection(conn)  # raises if broken: the pool tries another
    conn._nihil_handed_out_at = now


class DatabaseWrapper(base.DatabaseWrapper):
    def get_connection_params(self) -> dict[str, Any]:
        params: dict[str, Any] = super().get_connection_params()
        if params.get("cursor_factory") is _pg.Cursor:
            params["cursor_factory"] = Cursor
        return params

    def _set_autocommit(self, autocommit: bool) -> None:
        """psycopg stays in autocommit mode; leaving Django's marks a BEGIN as pending (sent
        with the next statement, by Cursor above)."""
        with self.wrap_database_errors:
            if not self.connection.autocommit:
                self.connection.autocommit = True
            self.connection._nihil_begin_pending = not autocommit
            self.connection._nihil_committed = False

    def commit_may_go_with_statement(self) -> bool:
        """Whether the statement about to be sent may end with the transaction's COMMIT: the
        only atomic block open is the outermost one (no savepoint, not a test's wrapping
        block), and nothing has marked it for rollback. Its caller must know that nothing
        after that statement can raise or run another statement before the block ends."""
        return (
            self.in_atomic_block
            and len(self.atomic_blocks) == 1
            and not self.savepoint_ids
            and not self.needs_rollback
            and self.connection is not None
        )

    def prepared(self, sql: str, count: int) -> str:
        """The EXECUTE, its `count` parameters still %s placeholders (bound client-side like any
        statement's), of a statement prepared from `sql` on this connection: PostgreSQL parses
        and plans it once per connection, not at every call (for a submit, 40-50 % of its
        server CPU). Prepared by a PREPARE of its own on first use, which outlives a
        rolled-back transaction. `sql` as it is when settings.DB_PREPARED_STATEMENTS is off
        (a pooler in transaction mode would run EXECUTE where the PREPARE never ran), or past
        MOST_PREPARED texts. Every parameter's type must follow from the text (a cast, a
        column it is compared with or assigned to)."""
        if not getattr(settings, "DB_PREPARED_STATEMENTS", False):
            return sql
        self.ensure_connection()
        conn = self.connection
        names: dict[str, str] | None = getattr(conn, "_nihil_prepared", None)
        if names is None:
            names = conn._nihil_prepared = {}
        name = names.get(sql)
        if name is None:
            if len(names) >= MOST_PREPARED:
                return sql
            name = f"nihil_{hashlib.sha256(sql.encode()).hexdigest()[:24]}"
            numbered = _queries._query2pg_nocache(sql.encode(), conn.info.encoding)[0]
            with self.cursor() as cursor:
                cursor.execute(f"PREPARE {name} AS {numbered.decode()}")
            names[sql] = name
        return f"EXECUTE {name}({', '.join(['%s'] * count)})" if count else f"EXECUTE {name}"

    def committed_by_statement(self) -> None:
        """The statement just sent ended with COMMIT (PostgreSQL reports no transaction open
        now): any further statement before the atomic block ends is refused."""
        assert self.connection.info.transaction_status == pq.TransactionStatus.IDLE
        self.connection._nihil_committed = True

    def create_cursor(self, name: str | None = None) -> Any:
        if name:  # a named cursor: DECLARE … WITH HOLD outside a transaction, as Django's
            _begin_alone(self.connection)
            held = self.connection.info.transaction_status == pq.TransactionStatus.IDLE
            cursor = _pg.ServerSideCursor(
                self.connection, name=name, scrollable=False, withhold=held
            )
            tzloader = self.connection.adapters.get_loader(_pg.TIMESTAMPTZ_OID, _pg.Format.TEXT)
            if self.timezone != tzloader.timezone:
                _pg.register_tzloader(self.timezone, cursor)
            return cursor
        return super().create_cursor(name)

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


def _pending_begin(conn: Any) -> str | None:
    """The BEGIN to send before `conn`'s next statement, or None; taken (cleared) here."""
    if not getattr(conn, "_nihil_begin_pending", False):
        return None
    conn._nihil_begin_pending = False
    # psycopg's own BEGIN, with the isolation level and access mode set on the connection.
    return conn._get_tx_start_command().decode()  # type: ignore[no-any-return]


def _refuse_after_commit(conn: Any) -> None:
    if getattr(conn, "_nihil_committed", False):
        raise RuntimeError(
            "A statement after the one that carried this transaction's COMMIT: it would run"
            " outside the atomic block's transaction."
        )


def _begin_alone(conn: Any) -> None:
    _refuse_after_commit(conn)
    begin = _pending_begin(conn)
    if begin is not None:
        try:
            conn.execute(begin)
        except BaseException:
            _begin_not_sent(conn)
            raise


def _begin_not_sent(conn: Any) -> None:
    """After a failure: if the server opened no transaction (the statement never left, a
    parameter could not be adapted), the next statement must still open it."""
    if conn.info.transaction_status == pq.TransactionStatus.IDLE:
        conn._nihil_begin_pending = True


# psycopg remembers how a client-side-bound query splits around its placeholders only for a
# query of at most 4 KB and 50 parameters. A submit's statement (proposal, revision, their
# history rows, the outbox row, the audit lock and append: 5 KB, 30 parameters) is longer, and
# psycopg split it again at every request with its regular expression: 4-5 % of a submit's
# CPU. The application's statements are few texts, each always the same; a text longer than
# this is split every time, as psycopg does.
LONGEST_REMEMBERED_QUERY = 64 * 1024
_split_template = functools.lru_cache(maxsize=512)(_queries._query2pg_client_nocache)


class ClientQuery(_queries.PostgresClientQuery):  # type: ignore[misc]  # psycopg internals
    """psycopg's client-side binding (PostgresClientQuery.convert), remembering the split of
    every query text up to LONGEST_REMEMBERED_QUERY."""

    __slots__ = ()

    def convert(self, query: Any, vars: Any) -> None:
        if vars is None or not isinstance(query, str):
            super().convert(query, vars)
            return
        bquery = query.encode(self._encoding)
        if len(bquery) > LONGEST_REMEMBERED_QUERY:
            super().convert(query, vars)
            return
        self.template, self._order, self._parts = _split_template(bquery, self._encoding)
        self.dump(vars)


class Cursor(_pg.Cursor):  # type: ignore[misc]  # untyped in the stubs
    """Django's client-side-binding cursor, sending a pending BEGIN in front of a statement,
    with the split of its queries remembered (ClientQuery)."""

    _query_cls = ClientQuery

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        _refuse_after_commit(self.connection)
        begin = _pending_begin(self.connection) if isinstance(query, str) else None
        if begin is None:
            _begin_alone(self.connection)
            return super().execute(query, params, **kwargs)
        try:
            super().execute(f"{begin}; {query}", params, **kwargs)
        except BaseException:
            _begin_not_sent(self.connection)
            raise
        self.nextset()  # past BEGIN's result, to the statement's
        return self

    def executemany(self, query: Any, params_seq: Any, **kwargs: Any) -> Any:
        _begin_alone(self.connection)
        return super().executemany(query, params_seq, **kwargs)

    def copy(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        _begin_alone(self.connection)
        return super().copy(statement, *args, **kwargs)

    def stream(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        _begin_alone(self.connection)
        return super().stream(query, params, **kwargs)
