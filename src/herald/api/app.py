"""The HTTP API: a FastAPI application over one Runtime."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from herald import __version__, web
from herald.api import errors, openapi
from herald.api.access import AccessLog
from herald.api.routes import (
    activity,
    admin,
    broadcasts,
    channels,
    engagement,
    inbox,
    notifications,
    ops,
    users,
    webhooks,
    workflows,
)
from herald.api.routing import scope_rule
from herald.runtime import Runtime

ROUTE_MODULES = (
    users,
    channels,
    notifications,
    broadcasts,
    inbox,
    admin,
    ops,
    webhooks,
    engagement,
    workflows,
    activity,
)
DEFAULT_BODY_LIMIT = 1 * 1024 * 1024
BATCH_BODY_LIMIT = 16 * 1024 * 1024
BROADCAST_BODY_LIMIT = 48 * 1024 * 1024
DESCRIPTION = """Multi-channel notifications: push, email, SMS and in-app.

Authenticate with `Authorization: Bearer <API key>` (`herald keys create --scope admin`
prints one; the Authorize button keeps it for "Try it out"). Errors are always
`{"error": {"code", "message", "details"}}`. docs/api.md is the guide."""


class BodyLimit:
    """Refuses a body over the limit before reading it whole: at once from Content-Length,
    or as soon as a chunked body passes the limit."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = _body_limit(scope["path"])
        length = _content_length(scope)
        if length is not None and length > limit:
            await _too_large(send, limit)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # An HTTPException: FastAPI, reading the body, lets it through as the
                    # 413 it is (anything else it would answer as a 400).
                    raise _BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _too_large(send, limit)


def _body_limit(path: str) -> int:
    if path == "/v1/broadcasts":
        return BROADCAST_BODY_LIMIT  # up to a million user ids
    return BATCH_BODY_LIMIT if path.endswith("/batch") else DEFAULT_BODY_LIMIT


class JsonOnly:
    """The API speaks JSON: a body without a Content-Type is read as JSON, a body of
    another type gets a 415 that says so. Webhooks keep their providers' own types."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith(("/v1/webhooks/", "/v1/unsubscribe", "/console/", "/preferences")):
            await self.app(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope.get("headers", []) if k != b"content-type"]
        content_type = dict(scope.get("headers", [])).get(b"content-type")
        if content_type and not content_type.split(b";")[0].strip().endswith(b"json"):
            body = errors.error_response(
                415,
                "unsupported_media_type",
                "send JSON with Content-Type: application/json "
                f"(got {content_type.decode(errors='replace')})",
            ).body
            await _send_json(send, 415, body)
            return
        scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


class InFlightLimit:
    """Sheds load instead of queueing it: past `limit` requests in flight in this process,
    new ones get a 503 with Retry-After at once, so a slow database or bus makes callers
    back off rather than time out while memory grows. Event streams are not counted."""

    def __init__(self, app: ASGIApp, limit: int = 512) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].endswith("/stream"):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            body = errors.error_response(
                503, "overloaded", f"over {self.limit} requests in flight; retry shortly"
            ).body
            await _send_json(send, 503, body, [(b"retry-after", b"1")])
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


class _BodyTooLarge(errors.HttpApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(_too_large_error(limit))


def _too_large_error(limit: int) -> errors.ApiError:
    return errors.ApiError(413, "payload_too_large", f"request body is over {limit} bytes")


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _too_large(send: Send, limit: int) -> None:
    error = _too_large_error(limit)
    body = errors.error_response(error.status, error.code, error.message).body
    await _send_json(send, 413, body)


async def _send_json(
    send: Send,
    status: int,
    body: bytes | memoryview,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": bytes(body)})


def create_app(runtime: Runtime) -> FastAPI:
    app = FastAPIOffline(  # /docs and /redoc from packaged assets: no CDN
        title="Herald",
        version=__version__,
        description=DESCRIPTION,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url="/redoc",
        static_url="/docs/assets",
        generate_unique_id_function=openapi.operation_id,
        swagger_ui_parameters={"persistAuthorization": True},
    )
    app.state.runtime = runtime
    errors.install(app)
    for module in ROUTE_MODULES:
        app.include_router(module.router)
    openapi.install(app, api_routes())
    web.install(app)
    app.add_middleware(JsonOnly)
    app.add_middleware(BodyLimit)
    app.add_middleware(InFlightLimit, limit=runtime.settings.api_max_in_flight)
    app.add_middleware(AccessLog)  # outermost: it sees every answer
    return app


def api_routes() -> list[APIRoute]:
    return [r for module in ROUTE_MODULES for r in module.router.routes if isinstance(r, APIRoute)]


def route_scopes() -> dict[tuple[str, str], str]:
    """(method, path) -> the auth rule guarding it, for the auth table test."""
    table: dict[tuple[str, str], str] = {}
    for route in api_routes():
        rule = scope_rule(route.dependant) or "none"
        for method in route.methods or ():
            table[(method, route.path)] = rule
    return table


__all__: list[Any] = ["create_app", "route_scopes"]
