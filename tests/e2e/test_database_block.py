"""Deployments read the database credentials from the ``parley-db`` SqlAlchemyConnector block
when it exists (operators manage them in the Prefect UI), else from PARLEY_DATABASE_URL."""

from __future__ import annotations

import uuid

from deployments.blocks import register_database_block
from parley.settings import Settings
from tasks.runtime import resolve_database_url


async def test_a_registered_block_provides_the_database_url(prefect_server: str) -> None:
    name = f"parley-db-{uuid.uuid4().hex[:8]}"
    await register_database_block(name, "postgresql+asyncpg://parley:s3cret@db.internal:5432/p")
    settings = Settings(db_block=name, database_url="sqlite+aiosqlite:////tmp/ignored.db")
    assert await resolve_database_url(settings) == (
        "postgresql+asyncpg://parley:s3cret@db.internal:5432/p"
    )


async def test_without_the_block_the_environment_url_is_used(prefect_server: str) -> None:
    settings = Settings(
        db_block=f"missing-{uuid.uuid4().hex[:8]}", database_url="postgresql+asyncpg://u@h/env"
    )
    assert await resolve_database_url(settings) == "postgresql+asyncpg://u@h/env"
