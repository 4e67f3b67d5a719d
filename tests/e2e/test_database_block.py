"""Deployments read the database credentials from the ``parley-db`` SqlAlchemyConnector block
when it exists (operators manage them in the Prefect UI), else from PARLEY_DATABASE_URL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments.blocks import register_database_block
from devkit.stack.processes import free_port
from parley.settings import Settings
from prefect_adapter.composition import DatabaseUrlUnknown, block_cache_path, resolve_database_url


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


@pytest.fixture
def prefect_is_down() -> Iterator[str]:
    """This process's Prefect API URL points at a port nobody listens on."""
    url = f"http://127.0.0.1:{free_port()}/api"
    with temporary_settings({PREFECT_API_URL: url}):
        yield url


async def test_with_prefect_down_the_url_the_block_gave_last_time_is_used(
    prefect_server: str, tmp_path: Path
) -> None:
    name = f"parley-db-{uuid.uuid4().hex[:8]}"
    block_url = "postgresql+asyncpg://parley:s3cret@db.internal:5432/p"
    await register_database_block(name, block_url)
    settings = Settings(db_block=name, database_url="", data_dir=tmp_path)
    assert await resolve_database_url(settings) == block_url  # read, and kept
    assert block_cache_path(settings).stat().st_mode & 0o077 == 0  # it holds a password
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}):
        assert await resolve_database_url(settings) == block_url


async def test_with_prefect_down_and_nothing_kept_an_explicit_database_url_is_used(
    prefect_is_down: str, tmp_path: Path
) -> None:
    settings = Settings(database_url="postgresql+asyncpg://u@h/env", data_dir=tmp_path)
    assert await resolve_database_url(settings) == "postgresql+asyncpg://u@h/env"


async def test_with_prefect_down_and_the_url_only_in_the_block_the_url_is_unknown(
    prefect_is_down: str, tmp_path: Path
) -> None:
    """Not the SQLite default: storing there while the workers read the block's database
    would lose every message (the webhook answers 503 and retries instead)."""
    settings = Settings(database_url="", data_dir=tmp_path)
    with pytest.raises(DatabaseUrlUnknown, match=prefect_is_down):
        await resolve_database_url(settings)
