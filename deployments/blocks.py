"""Register Parley's database credentials as a Prefect block (``parley-db``).

Workers then read the credentials from the block — visible and editable in the Prefect UI —
instead of each host's environment: ``PARLEY_DATABASE_URL=… python -m deployments.blocks``.
"""

from __future__ import annotations

import asyncio

from prefect_sqlalchemy import SqlAlchemyConnector
from sqlalchemy.engine import make_url

from parley.settings import get_settings

_SYNC_DRIVERS = {"postgresql": "postgresql+psycopg2", "sqlite": "sqlite"}


def sync_url(url: str) -> str:
    """SqlAlchemyConnector refuses async drivers; the block stores the sync form and workers
    turn it back into asyncpg/aiosqlite."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    parsed = parsed.set(drivername=_SYNC_DRIVERS.get(backend, parsed.drivername))
    return parsed.render_as_string(hide_password=False)


async def register_database_block(name: str, database_url: str) -> None:
    block = SqlAlchemyConnector(connection_info=sync_url(database_url))
    await block.save(name, overwrite=True)


def main() -> None:
    settings = get_settings()
    asyncio.run(register_database_block(settings.db_block, settings.resolved_database_url))
    print(f"saved block {settings.db_block!r}")


if __name__ == "__main__":
    main()
