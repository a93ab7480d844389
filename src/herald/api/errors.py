"""The contract's error shape: {"error": {"code", "message", "details"}}, never a 500 for
bad input."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from herald.bus.interface import BusUnavailable
from herald.outages import outage

log = structlog.get_logger()


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = headers


class HttpApiError(StarletteHTTPException):
    """An ApiError raised while FastAPI reads the body, where it lets HTTPExceptions
    through and turns anything else into a 400."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.status, error.message, error.headers)
        self.error = error


def error_response(
    status: int,
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, "details": details or []}},
        status_code=status,
        headers=headers,
    )


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


def validation_details(errors: Any) -> list[dict[str, Any]]:
    details = []
    for error in errors:
        location = [str(part) for part in error.get("loc", ()) if part != "body"]
        message = str(error.get("msg", "invalid"))
        message = message.removeprefix("Value error, ")
        given = error.get("input")
        if error.get("type") in (
            "enum",
            "literal_error",
            "dict_type",
            "string_type",
            "int_parsing",
        ) and isinstance(given, str | int | float | bool):
            message = f"{message} (got {given!r})"[:500]
        details.append({"field": ".".join(location), "message": message, "type": error.get("type")})
    return details


def _summary(details: list[dict[str, Any]]) -> str:
    first = details[0] if details else {"field": "", "message": "invalid request"}
    where = f"{first['field']}: " if first["field"] else ""
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return f"{where}{first['message']}{more}"


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "rate_limited",
    503: "unavailable",
}


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, error.code, error.message, error.details, error.headers)

    @app.exception_handler(HttpApiError)
    async def _http_api_error(_request: Request, wrapped: HttpApiError) -> JSONResponse:
        error = wrapped.error
        return error_response(error.status, error.code, error.message, error.details, error.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        details = validation_details(error.errors())
        if any(d.get("type") == "json_invalid" for d in details):
            return error_response(400, "malformed_json", "request body is not valid JSON", details)
        return error_response(422, "invalid", _summary(details), details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(error.status_code, "error")
        message = error.detail if isinstance(error.detail, str) else code
        headers = dict(error.headers) if error.headers else None
        return error_response(error.status_code, code, message, headers=headers)

    # The one handler for errors: an outage of the database or the bus is a 503 with
    # Retry-After; anything else unexpected is a 500. Registered for the outage classes
    # (answered by the routing layer) and for Exception (what escapes elsewhere, such as
    # a middleware, or arrives wrapped).
    for outage_class in _outage_classes():
        app.add_exception_handler(outage_class, _unexpected_or_outage)
    app.add_exception_handler(Exception, _unexpected_or_outage)


async def _unexpected_or_outage(request: Request, error: Exception) -> JSONResponse:
    return unexpected_response(error, request.method, request.url.path)


def unexpected_response(error: Exception, method: str, path: str) -> JSONResponse:
    what = outage(error)
    if what is not None:
        # Down, restarting or saturated: nothing was accepted, and the caller may retry
        # (with the same Idempotency-Key, a retried POST is safe).
        log.warning(f"{what} unavailable", path=path, method=method, error=type(error).__name__)
        return error_response(
            503,
            "unavailable",
            f"the {what} is unavailable; retry shortly",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )
    log.error("unhandled error", path=path, method=method, exc_info=error)
    return error_response(500, "internal", "internal error; it has been logged")


RETRY_AFTER_SECONDS = "2"


def _outage_classes() -> tuple[type[Exception], ...]:
    classes: list[type[Exception]] = [sa_exc.DBAPIError, sa_exc.TimeoutError, OSError]
    classes.append(BusUnavailable)
    try:
        import asyncpg
    except ImportError:  # pragma: no cover - asyncpg is a pinned dependency
        return tuple(classes)
    classes += [asyncpg.PostgresError, asyncpg.InterfaceError]
    return tuple(classes)
