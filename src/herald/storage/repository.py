"""The base of every repository: the database it works on, its dialect and its clock."""

from __future__ import annotations

from herald.clock import Clock
from herald.storage.database import Database


class Repository:
    def __init__(self, database: Database) -> None:
        self.db = database
        self.dialect = database.dialect

    @property
    def clock(self) -> Clock:
        return self.db.clock
