"""Every query Parley runs. Callers pass a session inside ``Database.transaction()``.

Row locks: ``lock_conversation`` is ``SELECT ... FOR UPDATE`` on PostgreSQL; on SQLite the
transaction already holds the database write lock (``BEGIN IMMEDIATE``), which is stronger.

One module per noun; callers write ``queries.<noun>.<query>(session, ...)``.
"""

from parley.db.queries import (
    actions,
    campaigns,
    contacts,
    conversations,
    identities,
    lead_imports,
    leads,
    messages,
    repairs,
    suppressions,
    visits,
    webhook_events,
)

__all__ = [
    "actions",
    "campaigns",
    "contacts",
    "conversations",
    "identities",
    "lead_imports",
    "leads",
    "messages",
    "repairs",
    "suppressions",
    "visits",
    "webhook_events",
]
