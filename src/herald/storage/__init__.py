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


def open_store(url: str, clock: Clock = SYSTEM_CLOCK) -> Store:
    """The store for a database URL: sqlite:///path or postgresql://user:pw@host/db."""
    if url.startswith("sqlite"):
        from herald.storage.sqlite import SqliteStore

        return SqliteStore.connect(url, clock)
    if url.startswith(("postgresql", "postgres")):
        from herald.storage.postgres import PostgresStore

        return PostgresStore.connect(url, clock)
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:/// or postgresql://")


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
