"""One answer to "is this error an outage?", for every place that must tell a dependency
that is down (pause, retry, answer 503) from a bad input or a bug (set it aside, 4xx/500):
the roles' consume loop and start-up, the API's error handler, the live inbox hub."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Literal

import sqlalchemy.exc as sa_exc

from herald.bus.interface import BusUnavailable

Dependency = Literal["database", "bus"]

# SQLSTATE classes of an outage, not of a bad row: connection exception, transaction
# rollback (deadlock, serialization), insufficient resources, operator intervention
# (shutdown, "cannot connect now"), system error.
_OUTAGE_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
_OUTAGE_SQLSTATES = frozenset({"55P03"})  # lock not available


def outage(error: BaseException) -> Dependency | None:
    """Which dependency `error` (or what caused it, or one of its group) says cannot be
    reached right now; None for any other error."""
    for cause in _causes(error):
        what = _outage_of(cause)
        if what is not None:
            return what
    return None


def is_outage(error: BaseException) -> bool:
    return outage(error) is not None


def _outage_of(error: BaseException) -> Dependency | None:
    if isinstance(error, BusUnavailable):
        return "bus"
    if isinstance(error, OSError):  # refused, reset, unreachable, timed out (ConnectionError)
        return "database"
    if isinstance(error, sqlite3.OperationalError):  # "database is locked" (native statements)
        return "database"
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return "database"
    if isinstance(
        error,
        sa_exc.OperationalError
        | sa_exc.InterfaceError
        | sa_exc.DisconnectionError
        | sa_exc.TimeoutError,
    ):
        # SQLite's "database is locked", a pool that timed out, a connection that broke.
        return "database"
    code = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    if isinstance(code, str) and (
        code[:2] in _OUTAGE_SQLSTATE_CLASSES or code in _OUTAGE_SQLSTATES
    ):
        return "database"
    if type(error).__module__.startswith("asyncpg") and _is_asyncpg_outage(error):
        return "database"
    return None


def _is_asyncpg_outage(error: BaseException) -> bool:
    import asyncpg

    if isinstance(error, asyncpg.InterfaceError):  # also misuse: only "connection is closed"
        return "closed" in str(error)
    return isinstance(
        error,
        asyncpg.PostgresConnectionError  # class 08: the connection failed or is gone
        | asyncpg.exceptions.OperatorInterventionError  # 57: shutting down, starting up
        | asyncpg.exceptions.InsufficientResourcesError  # 53: too many connections
        # A query on a connection the server has just terminated, before asyncpg has read
        # the termination: "cannot switch to state ...; another operation is in progress".
        | asyncpg.InternalClientError,
    )


def _causes(error: BaseException) -> Iterator[BaseException]:
    """`error`, what caused it (`__cause__`, `__context__`, a DBAPIError's `orig`) and the
    members of an exception group, each once."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        orig = getattr(current, "orig", None)
        pending.extend(
            [
                current.__cause__,
                current.__context__,
                orig if isinstance(orig, BaseException) else None,
            ]
        )
