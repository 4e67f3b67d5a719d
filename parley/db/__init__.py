"""Parley's storage: models, the queries (all SQL lives in ``queries``), migrations, engines."""

from parley.db.engine import Database, create_engine, is_sqlite

__all__ = ["Database", "create_engine", "is_sqlite"]
