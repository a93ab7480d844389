"""State: one repository (`Store`), on SQLite (embedded) or PostgreSQL (production)."""

from __future__ import annotations

from herald.clock import SYSTEM_CLOCK, Clock
from herald.storage.records import (
    AcceptResult,
    ApiKeyRecord,
    DeliveryUpdate,
    InboxItem,
    NewNotification,
    Page,
    ProviderReport,
    Released,
    RoutingInput,
    SandboxMessage,
    Suppression,
)
from herald.storage.store import InvalidCursor, Store, new_id


def open_store(url: str, clock: Clock = SYSTEM_CLOCK, *, retention_days: int = 30) -> Store:
    """The store for a database URL: sqlite:///path or postgresql://user:pw@host/db."""
    store: Store
    if url.startswith("sqlite"):
        from herald.storage.sqlite import SqliteStore

        store = SqliteStore.connect(url, clock)
    elif url.startswith(("postgresql", "postgres")):
        from herald.storage.postgres import PostgresStore

        store = PostgresStore.connect(url, clock)
    else:
        raise ValueError(f"unsupported database URL {url!r}: use sqlite:/// or postgresql://")
    store.retention_days = retention_days
    return store


__all__ = [
    "AcceptResult",
    "ApiKeyRecord",
    "DeliveryUpdate",
    "InboxItem",
    "InvalidCursor",
    "NewNotification",
    "Page",
    "ProviderReport",
    "Released",
    "RoutingInput",
    "SandboxMessage",
    "Store",
    "Suppression",
    "new_id",
    "open_store",
]
