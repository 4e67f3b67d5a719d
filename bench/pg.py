"""The benchmark's PostgreSQL databases: created fresh per run, measured, never anybody else's.

Every peer gets its own database on the same server (``*_bench``), dropped and recreated at the
start of a run, so a figure never depends on what an earlier run left behind and the size of
Parley's tables before and after N conversations is Parley's alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import psycopg
from psycopg import sql

SUFFIX: Final = "_bench"


@dataclass(frozen=True)
class Server:
    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"

    def dsn(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def asyncpg_url(self, database: str) -> str:
        return f"postgresql+asyncpg://{self.user}@{self.host}:{self.port}/{database}"

    def version(self) -> str:
        with psycopg.connect(self.dsn("postgres"), connect_timeout=5) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"

    def check(self) -> None:
        """Fail fast with a clear message rather than with every peer timing out."""
        try:
            self.version()
        except psycopg.Error as exc:
            raise SystemExit(
                f"PostgreSQL is not reachable at {self.host}:{self.port} as {self.user} "
                f"(trust auth expected): {exc}"
            ) from exc

    def recreate(self, database: str) -> None:
        if not database.endswith(SUFFIX):  # never drop a database the benchmark does not own
            raise ValueError(f"refusing to drop {database!r}: benchmark databases end in {SUFFIX}")
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            name = sql.Identifier(database)
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(name))

    def tables_bytes(self, database: str, schema: str = "public") -> int:
        """Heap + indexes + TOAST of every table in ``schema`` (the application's own data)."""
        query = """
            SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'm')
        """
        with psycopg.connect(self.dsn(database)) as conn:
            row = conn.execute(query, (schema,)).fetchone()
        return int(row[0]) if row else 0

    def database_bytes(self, database: str) -> int:
        with psycopg.connect(self.dsn("postgres")) as conn:
            row = conn.execute("SELECT pg_database_size(%s)", (database,)).fetchone()
        return int(row[0]) if row else 0

    def table_writes(self, database: str) -> dict[str, int]:
        """Rows inserted + updated + deleted per table so far (PostgreSQL's statistics; they
        lag commits by up to a second, so take the "after" snapshot after a pause)."""
        query = "SELECT relname, n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables"
        with psycopg.connect(self.dsn(database)) as conn:
            return {str(name): int(count) for name, count in conn.execute(query).fetchall()}


def writes_between(before: dict[str, int], after: dict[str, int], per: int) -> dict[str, float]:
    """Rows written per unit (turn, conversation), busiest tables first, zeros left out."""
    delta = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    busiest = sorted(((n, d) for n, d in delta.items() if d > 0), key=lambda item: -item[1])
    return {name: round(count / per, 1) for name, count in busiest}
