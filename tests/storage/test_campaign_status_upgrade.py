"""The upgrade that gives campaigns a status (revision 0008) keeps what an installation had:
a campaign that could start conversations is active, a held one stays paused with its reason,
and a downgrade keeps holding what was paused or a draft. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

from alembic import command
from sqlalchemy import text

from parley.db import Database
from parley.db.migrate import alembic_config, upgrade


async def _sql(db: Database, statement: str) -> list[tuple[object, ...]]:
    async with db.transaction() as session:
        result = await session.execute(text(statement))
        return [tuple(row) for row in result.all()] if result.returns_rows else []


async def test_held_campaigns_become_paused_and_the_others_active(db: Database) -> None:
    await db.dispose()
    await asyncio.to_thread(command.downgrade, alembic_config(db.url), "0007")
    for name in ("onboarding", "follow-up"):
        await _sql(
            db,
            "INSERT INTO campaign_versions (name, version, digest, source, created_at) "
            f"VALUES ('{name}', 1, '{name}-digest', 'name: {name}', CURRENT_TIMESTAMP)",
        )
    await _sql(
        db,
        "INSERT INTO campaign_holds (name, paused_at, reason) "
        "VALUES ('follow-up', CURRENT_TIMESTAMP, 'copy review')",
    )
    await db.dispose()

    await asyncio.to_thread(upgrade, db.url)
    await db.dispose()

    assert await _sql(db, "SELECT name, status, reason FROM campaigns ORDER BY name") == [
        ("follow-up", "paused", "copy review"),
        ("onboarding", "active", None),
    ]
    await _sql(db, "UPDATE campaigns SET status = 'draft' WHERE name = 'onboarding'")
    await db.dispose()
    await asyncio.to_thread(command.downgrade, alembic_config(db.url), "0007")
    await db.dispose()
    held = await _sql(db, "SELECT name, reason FROM campaign_holds ORDER BY name")
    assert held == [("follow-up", "copy review"), ("onboarding", None)]
    await asyncio.to_thread(upgrade, db.url)
