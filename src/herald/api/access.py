"""One access line and the HTTP metrics per request, and the one place an unexpected
error becomes its 500: logged once, as one JSON line, and answered in the error shape
(it does not reach uvicorn, which would log it again as a bare traceback)."""

from __future__ import annotations

import time

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from herald.api.errors import unexpected_response
from herald.metrics import METRICS
from herald.security import KEY_PREFIX

log = structlog.get_logger("herald.access")
UNMATCHED = "unmatched"  # a path no route knows: one label, whatever was asked
# Where the route that answers writes its template. A list the scope carries: middlewares
# that pass a copy of the scope on still share it.
ROUTE_SLOT = "herald.route"


def name_route(scope: Scope, template: str) -> None:
    """Called by the route that answers (api/routing.py HeraldRoute)."""
    slot = scope.get(ROUTE_SLOT)
    if slot is not None:
        slot.append(template)


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        route: list[str] = []
        scope[ROUTE_SLOT] = route
        status = 500
        response_started = False

        async def tracking_send(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as error:
            response = unexpected_response(error, scope["method"], scope["path"])
            status = response.status_code
            if not response_started:
                await response(scope, receive, send)
        finally:
            self._record(scope, route[0] if route else UNMATCHED, status, started)

    def _record(self, scope: Scope, route: str, status: int, started: float) -> None:
        seconds = time.perf_counter() - started
        method = scope["method"]
        METRICS.http_requests.labels(method, route, str(status)).inc()
        METRICS.http_seconds.labels(method, route).observe(seconds)
        log.info(
            "request",
            method=method,
            route=route,
            path=scope["path"],
            status=status,
            duration_ms=round(seconds * 1000, 2),
            key_id=presented_key_id(scope),
        )


def presented_key_id(scope: Scope) -> str | None:
    """The id part of an API key in the Authorization header (hk_<id>_<secret>): it names
    the caller without anything that would let a reader of the log use the key."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            token = value.decode("latin-1").removeprefix("Bearer ").strip()
            if token.startswith(KEY_PREFIX):
                key_id = token[len(KEY_PREFIX) :].partition("_")[0]
                return key_id if len(key_id) == 16 else None
            return None
    return None
