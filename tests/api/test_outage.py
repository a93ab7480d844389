"""A database or bus outage is a 503 with Retry-After and the standard error body, never a
500: through the whole API on both backends with the database made unreachable, and the
mapping of each outage exception (and of what is not one) on a bare app."""

from __future__ import annotations

import sqlite3
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from herald.api import errors
from herald.bus.interface import BusUnavailable
from herald.runtime import Runtime


def assert_unavailable(answer: httpx.Response) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.headers["Retry-After"] == errors.RETRY_AFTER_SECONDS
    body = answer.json()
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == "unavailable"


async def broken_connection_engine(url: str) -> AsyncEngine:
    """An engine whose pooled connection the server has since terminated, as a PostgreSQL
    restart leaves every connection of every pool."""
    engine = create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://", 1))
    async with engine.connect() as db:
        pid = await db.scalar(sa.text("SELECT pg_backend_pid()"))
    admin = await asyncpg.connect(url)
    try:
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()
    return engine


async def test_an_unreachable_database_is_a_503_with_retry_after(
    runtime: Runtime, api: httpx.AsyncClient, backend: str, tmp_path: Any
) -> None:
    await api.put("/v1/users/42", json={"email": "a@example.com"})
    original = runtime.storage.database.engine
    replaced: list[AsyncEngine] = []
    notification = {"user_id": "42", "category": "news", "title": "Hi", "body": "There"}
    try:
        if backend == "production":
            # The pool's connection died with the server: the first statement finds out.
            url = str(runtime.settings.database_url)
            replaced.append(await broken_connection_engine(url))
            runtime.storage.database.point_at(replaced[-1])
            post = await api.post(
                "/v1/notifications", json=notification, headers={"Idempotency-Key": "k1"}
            )
            assert_unavailable(post)
            # And while it restarts, nothing listens.
            replaced.append(create_async_engine("postgresql+asyncpg://herald:x@127.0.0.1:1/x"))
        else:
            missing = tmp_path / "gone" / "herald.db"  # a volume that went away
            replaced.append(create_async_engine(f"sqlite+aiosqlite:///{missing}"))
        runtime.storage.database.point_at(replaced[-1])

        post = await api.post(
            "/v1/notifications", json=notification, headers={"Idempotency-Key": "k2"}
        )
        get = await api.get(f"/v1/notifications/{uuid.uuid4().hex}")

        assert_unavailable(post)
        assert_unavailable(get)
    finally:
        runtime.storage.database.point_at(original)
        for engine in replaced:
            await engine.dispose()
    assert (await api.get("/v1/users/42")).status_code == 200  # back when the database is


def _asyncpg(kind: type[Exception], message: str) -> Exception:
    return kind(message)


OUTAGES: dict[str, BaseException] = {
    "connection invalidated (restart)": sa_exc.DBAPIError(
        "SELECT 1",
        {},
        _asyncpg(asyncpg.exceptions.ConnectionDoesNotExistError, "connection was closed"),
        connection_invalidated=True,
    ),
    "administrator shutdown": sa_exc.DBAPIError(
        "SELECT 1", {}, _asyncpg(asyncpg.exceptions.AdminShutdownError, "terminating")
    ),
    "starting up (raw asyncpg)": _asyncpg(
        asyncpg.exceptions.CannotConnectNowError, "the database system is starting up"
    ),
    "too many connections": _asyncpg(asyncpg.exceptions.TooManyConnectionsError, "too many"),
    "sqlite locked": sa_exc.OperationalError(
        "INSERT", {}, sqlite3.OperationalError("database is locked")
    ),
    "refused": ConnectionRefusedError(111, "Connect call failed"),
    "pool timeout": sa_exc.TimeoutError("QueuePool limit reached"),
    "bus": BusUnavailable("topic herald.notifications has no leader"),
    "in a group": ExceptionGroup("roles", [BusUnavailable("broker down")]),
}
NOT_OUTAGES: dict[str, BaseException] = {
    "a bug": ValueError("a bug"),
    "a constraint": sa_exc.IntegrityError(
        "INSERT", {}, _asyncpg(asyncpg.exceptions.UniqueViolationError, "duplicate key")
    ),
    "a bad statement": _asyncpg(asyncpg.exceptions.UndefinedColumnError, "no such column"),
}


def bare_app(error: BaseException, *, in_middleware: bool = False) -> FastAPI:
    app = FastAPI()
    errors.install(app)

    @app.get("/boom")
    async def boom() -> None:
        raise error

    if in_middleware:

        @app.middleware("http")
        async def failing(request: Any, call_next: Any) -> Any:
            raise error

    return app


async def status_of(app: FastAPI) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://herald.test") as client:
        return await client.get("/boom")


@pytest.mark.parametrize("in_middleware", [False, True], ids=["route", "middleware"])
@pytest.mark.parametrize("error", OUTAGES.values(), ids=OUTAGES.keys())
async def test_every_outage_exception_is_a_503(error: BaseException, in_middleware: bool) -> None:
    assert_unavailable(await status_of(bare_app(error, in_middleware=in_middleware)))


@pytest.mark.parametrize("error", NOT_OUTAGES.values(), ids=NOT_OUTAGES.keys())
async def test_other_errors_stay_500(error: BaseException) -> None:
    answer = await status_of(bare_app(error))
    assert answer.status_code == 500
    assert answer.json()["error"]["code"] == "internal"
