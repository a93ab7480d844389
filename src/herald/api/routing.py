"""What every API route does before its own code: authenticate the caller, refuse text
that cannot be stored, and read the JSON body strictly.

`HeraldRoute` is the route class of every router. Its handler authenticates first, by the
rule the route declares (`require(...)`), so an unauthenticated request is answered 401
before FastAPI reads or parses a byte of its body. Path and query parameters carrying a
NUL or a lone surrogate are refused with a 422 that names them (PostgreSQL cannot store
either; SQLite would). The body, when the route takes one, is parsed by `strict_json`:
duplicate keys, NaN/Infinity (and numbers too large to be finite) and unstorable text are
a 422 naming the field, where Python's json would take the last key, accept NaN and pass
NUL through.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from herald.api.access import name_route
from herald.api.deps import authenticate
from herald.api.errors import ApiError, HttpApiError

# Text PostgreSQL cannot store in `text` or `jsonb` (NUL), and text that is not Unicode
# (a lone surrogate, from a "\ud800" escape); SQLite would store the first and fail on
# the second, PostgreSQL fails on both. Refused everywhere, the same on both backends.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# Headers whose value Herald stores.
_STORED_HEADERS = ("idempotency-key",)


def text_problem(value: str) -> str | None:
    """Why `value` cannot be stored as text, or None."""
    found = _UNSTORABLE.search(value)
    if found is None:
        return None
    if found.group() == "\x00":
        return "contains a NUL character (U+0000), which Herald does not store"
    return f"contains a lone surrogate (U+{ord(found.group()):04X}), which is not Unicode text"


class _NonFinite:
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


class _DuplicateKeys(dict[str, Any]):
    duplicate: str = ""


def _may_hold_unstorable_text(text: str) -> bool:
    """Cheap signs (substring searches) that a body may hold such text: only then is the
    parsed value walked. A surrogate escape may be half of a valid pair; the walk tells."""
    return "\\u0000" in text or "\\ud" in text or "\\uD" in text


def strict_json(body: bytes) -> Any:
    """json.loads, refusing what it would silently accept (see the module's docstring).

    One parse: the hooks only mark what they find; the parsed value is walked for the
    field's path only when a mark was made or the bytes hint at unstorable text."""
    marked = False

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal marked
        result = dict(items)
        if len(result) == len(items):
            return result
        marked = True
        duplicates = _DuplicateKeys(result)
        seen: set[str] = set()
        for key, _ in items:
            if key in seen:
                duplicates.duplicate = key
                break
            seen.add(key)
        return duplicates

    def constant(text: str) -> _NonFinite:
        nonlocal marked
        marked = True
        return _NonFinite(text)

    def number(text: str) -> float | _NonFinite:
        value = float(text)
        return value if math.isfinite(value) else constant(text)

    try:
        # JSON is UTF-8 (RFC 8259): json.loads would also take UTF-16 and UTF-32, and
        # surrogates written as raw bytes.
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise HttpApiError(
            ApiError(400, "malformed_json", f"request body is not UTF-8: {error.reason}")
        ) from None
    value = json.loads(text, object_pairs_hook=pairs, parse_constant=constant, parse_float=number)
    if marked or _may_hold_unstorable_text(text):
        problem = _first_problem(value)
        if problem is not None:
            field, message, kind = problem
            raise HttpApiError(
                ApiError(
                    422,
                    "invalid",
                    f"{field}: {message}" if field else message,
                    [{"field": field, "message": message, "type": kind}],
                )
            )
    return value


def _first_problem(value: Any) -> tuple[str, str, str] | None:
    """(field path, message, type) of the first thing strict_json refuses, depth first."""
    stack: list[tuple[tuple[str, ...], Any]] = [((), value)]
    while stack:
        path, item = stack.pop()
        field = ".".join(path)
        if isinstance(item, str):
            reason = text_problem(item)
            if reason:
                return field, reason, "text_unstorable"
        elif isinstance(item, _NonFinite):
            return field, f"is {item.text}; numbers must be finite", "json_non_finite"
        elif isinstance(item, dict):
            if isinstance(item, _DuplicateKeys):
                where = ".".join((*path, item.duplicate))
                return where, "is given more than once (duplicate JSON key)", "json_duplicate_key"
            children = []
            for key, child in item.items():
                reason = text_problem(key)
                if reason:
                    shown = key.encode("unicode_escape").decode("ascii")
                    return ".".join((*path, shown)), f"the key {reason}", "text_unstorable"
                children.append(((*path, key), child))
            stack.extend(reversed(children))
        elif isinstance(item, list):
            stack.extend(((*path, str(i)), child) for i, child in reversed(list(enumerate(item))))
    return None


def refuse_unstorable_parameters(request: Request) -> None:
    """Path and query parameters (and stored headers) the same way as body text."""
    sources: list[tuple[str, list[tuple[str, Any]]]] = [
        ("path", list(request.path_params.items())),
        ("query", request.query_params.multi_items()),
        ("header", [(h, request.headers[h]) for h in _STORED_HEADERS if h in request.headers]),
    ]
    for where, items in sources:
        for name, value in items:
            reason = text_problem(value) if isinstance(value, str) else None
            if reason is None and where == "query":
                reason = text_problem(name)
            if reason:
                field = f"{where}.{name}"
                raise ApiError(
                    422,
                    "invalid",
                    f"{field}: {reason}",
                    [{"field": field, "message": reason, "type": "text_unstorable"}],
                )


class StrictJsonRequest(Request):
    """A request whose .json() is strict_json (FastAPI reads bodies through .json())."""

    _parsed: Any = None
    _has_parsed = False

    async def json(self) -> Any:
        if not self._has_parsed:
            self._parsed = strict_json(await self.body())
            self._has_parsed = True
        return self._parsed


def scope_rule(dependant: Dependant) -> str | None:
    """The auth rule a route declares through require()/require_inbox_access()/public()."""
    rules = [getattr(d.call, "scope_rule", None) for d in dependant.dependencies]
    return next((r for r in rules if r), None)


Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class HeraldRoute(APIRoute):
    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        rule = scope_rule(self.dependant)
        template = self.path

        async def guarded(request: Request) -> Response:
            name_route(request.scope, template)
            if rule is not None and rule != "public":
                await authenticate(request, rule)  # before the body is read
            refuse_unstorable_parameters(request)
            return await handler(StrictJsonRequest(request.scope, request.receive))

        return guarded
