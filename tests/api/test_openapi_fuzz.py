"""Schemathesis against the app's own /openapi.json, in-process: for every operation,
requests generated from the schema (positive) and mutated to break it (negative), sent
with an admin key. Whatever arrives, Herald answers without a 5xx, and every 4xx is the
contract's error shape {"error": {"code", "message", "details"}}.

On both backends: what a store accepts differs (PostgreSQL refuses NUL in text and jsonb,
which SQLite stores), and the API must refuse such input the same way on both, before it
reaches either. PostgreSQL runs with the in-process bus: the bus plays no part here.
Generated strings include NUL.

Schemathesis reaches the app through its own event loop thread, so the Runtime is created
and started inside the app's lifespan, in that loop, rather than by the `runtime` fixture.

Scale it up with HERALD_FUZZ_EXAMPLES=200 (and HERALD_FUZZ_RANDOM=1 for new inputs on
every run); the default run is bounded and deterministic.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.result import Ok
from schemathesis.python import asgi as schemathesis_asgi
from schemathesis.schemas import BaseSchema
from starlette.types import Receive, Scope, Send

from herald.api.app import create_app
from herald.config import Settings
from herald.runtime import Runtime
from herald.security import generate_key

MAX_EXAMPLES = int(os.environ.get("HERALD_FUZZ_EXAMPLES", "15"))
DERANDOMIZE = os.environ.get("HERALD_FUZZ_RANDOM", "") == ""

# The inbox stream is an endless Server-Sent Events response: a generated request that
# passes validation opens a stream that only ends when the client goes away, so every
# example would wait out a timeout. Its parameters (user_id, token) are the same as the
# inbox list's, which is fuzzed, and its auth is covered in test_auth.py.
SKIPPED = {("GET", "/v1/users/{user_id}/inbox/stream")}


def app_without_runtime() -> FastAPI:
    """The app as far as its routes and OpenAPI document go: no Runtime is started."""
    stub = SimpleNamespace(settings=Settings(api_key=None, kafka_bootstrap=None))
    return create_app(cast(Runtime, stub))


def _operations() -> list[tuple[str, str]]:
    document = app_without_runtime().openapi()
    return sorted(
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
        if (method.upper(), path) not in SKIPPED
    )


OPERATIONS = _operations()


class HeraldUnderTest:
    """The API as an ASGI app whose lifespan starts a Runtime in the loop that serves the
    requests, with one admin key. Schemathesis ends the lifespan after each test, so a
    later test starts it again on the same data directory or database."""

    def __init__(self, data_dir: Path, database_url: str | None = None) -> None:
        self.settings = Settings(
            data_dir=data_dir,
            log_format="console",
            database_url=database_url,
            kafka_bootstrap=None,
            api_key=None,
        )
        self.key = generate_key()
        self.runtime: Runtime | None = None
        self.migrated = False
        self.app: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.runtime = Runtime.from_settings(self.settings)
                await self.runtime.start(migrate=not self.migrated)
                self.migrated = True
                if await self.runtime.storage.keys.get_api_key(self.key.id) is None:
                    await self.runtime.storage.keys.create_api_key(
                        self.key.id, self.key.secret_hash, ["admin"], "fuzz"
                    )
                self.app = create_app(self.runtime)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.runtime is not None:
                    await self.runtime.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


@pytest.fixture(
    scope="module",
    params=[
        "embedded",
        pytest.param("postgres", marks=[pytest.mark.production, pytest.mark.postgres]),
    ],
)
def herald_app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HeraldUnderTest]:
    database_url = (
        request.getfixturevalue("postgres_test_url") if request.param == "postgres" else None
    )
    app = HeraldUnderTest(tmp_path_factory.mktemp("fuzz") / "herald", database_url)
    try:
        yield app
    finally:
        schemathesis_asgi.shutdown_lifespans()


@pytest.fixture(scope="module")
def schema(herald_app: HeraldUnderTest) -> BaseSchema:
    loaded = schemathesis.openapi.from_asgi("/openapi.json", herald_app)
    loaded.config.generation.update(allow_x00=True)
    return loaded


def test_every_operation_is_fuzzed_or_skipped_with_a_reason(schema: BaseSchema) -> None:
    results = list(schema.get_all_operations())
    assert all(isinstance(result, Ok) for result in results), "the schema does not load"
    loaded = {
        (result.ok().method.upper(), result.ok().path)
        for result in results
        if isinstance(result, Ok)
    }
    assert loaded == set(OPERATIONS) | SKIPPED
    assert len(OPERATIONS) >= 30


def assert_error_shape(status: int, body: Any) -> None:
    assert isinstance(body, dict), (status, body)
    assert set(body) == {"error"}, (status, body)
    error = body["error"]
    assert isinstance(error, dict), body
    assert set(error) == {"code", "message", "details"}, body
    assert isinstance(error["code"], str), body
    assert error["code"], body
    assert isinstance(error["message"], str), body
    assert error["message"], body
    assert isinstance(error["details"], list), body


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize("endpoint", OPERATIONS, ids=" ".join)
def test_no_5xx_and_every_4xx_has_the_error_shape(
    endpoint: tuple[str, str],
    mode: GenerationMode,
    schema: BaseSchema,
    herald_app: HeraldUnderTest,
) -> None:
    method, path = endpoint
    operation = schema[path][method]
    auth = {"Authorization": f"Bearer {herald_app.key.token}"}

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=DERANDOMIZE,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: schemathesis.Case[Any]) -> None:
        response = case.call(headers=auth, timeout=10)
        described = f"{case.method} {case.formatted_path} -> {response.status_code}: "
        assert response.status_code < 500, described + response.text[:2000]
        if 400 <= response.status_code < 500:
            try:
                body = response.json()
            except ValueError:
                pytest.fail(described + f"not JSON: {response.text[:500]!r}")
            assert_error_shape(response.status_code, body)

    try:
        check()
    except Unsatisfiable:
        # Negative mode only: nothing in this operation's schema can be made invalid (no
        # parameters and no body, or only unconstrained strings, which any text satisfies).
        assert mode == GenerationMode.NEGATIVE
        pytest.skip("the schema leaves nothing to make invalid")
