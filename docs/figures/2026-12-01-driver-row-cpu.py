"""CPU of mapping one driver row of a delivery to the domain (herald.storage.rows.to_delivery)
when the row is read through a `__getattr__` over a dict (herald.storage.native.Record before
37d465a) and when its values are the object's own `__dict__` (after).

    PYTHONPATH=src .venv/bin/python docs/figures/2026-12-01-driver-row-cpu.py
"""

from __future__ import annotations

import timeit
from datetime import UTC, datetime
from typing import Any

from herald.storage.native import Record
from herald.storage.rows import to_delivery


class GetattrRecord:
    """The Record before: a dict behind `__getattr__`."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None


now = datetime.now(UTC)
row: dict[str, Any] = {
    "id": "d",
    "notification_id": "n",
    "user_id": "u",
    "channel": "push",
    "target": "t",
    "target_ref": "r",
    "state": "sending",
    "policy": "at_least_once",
    "priority": "normal",
    "category": "c",
    "payload": {},
    "attempts": 1,
    "provider": None,
    "platform": "android",
    "provider_message_id": None,
    "last_error": None,
    "due_at": None,
    "expires_at": None,
    "lease_until": now,
    "created_at": now,
    "updated_at": now,
    "claimed_at": now,
}
for name, kind in (("__getattr__", GetattrRecord), ("__dict__", Record)):
    best = min(timeit.repeat(lambda k=kind: to_delivery(k(dict(row))), number=20_000, repeat=5))
    print(f"{name}: {best / 20_000 * 1e6:.2f} µs per row")
