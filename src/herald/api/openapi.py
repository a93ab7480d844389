"""The OpenAPI document, shaped so a client can be generated from it.

FastAPI writes the document from the routes; `install` finishes it the same way for every
route, present and future, so a new route only has to declare what is its own:

- the bearer security scheme, on every operation whose route requires a key (public()
  routes get none), with the scope it needs in its description;
- Herald's error model (`{"error": {"code", "message", "details"}}`) on every error
  status the route can answer: 401, 403 and 429 where it authenticates, 404 where it has
  path parameters, 400/413/415/422 where it takes a body, 422 where it takes parameters,
  503 everywhere (database or bus down), and whatever the route declares with
  `responses=errors(409, ...)`; FastAPI's own `{"detail": ...}` shape is removed;
- an example on each request body and success response: the model's own
  (`json_schema_extra={"examples": [...]}`), else one built from its fields' examples,
  defaults and types;
- operation ids from the route's function name (`put_user`), which become the generated
  client's function names.

tests/api/test_openapi_document.py walks the document and fails for an operation that
lacks any of these or a typed success schema."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from herald.api.routing import scope_rule

SECURITY_SCHEME = "bearer"
ERROR_DESCRIPTIONS = {
    400: "Malformed: the body is not valid JSON, or a cursor is not one Herald gave",
    401: "No API key, or one that is unknown, revoked or malformed",
    403: "The key lacks the scope this operation needs",
    404: "Not found",
    409: "Conflict: the Idempotency-Key was used with another body",
    413: "The body is over the size limit",
    415: "The body is not JSON",
    422: "The request does not validate; `details` names each field",
    429: "Over this key's rate limit; `Retry-After` says when to retry",
    503: "The database or the bus is unavailable, or the API is overloaded; retry after "
    "`Retry-After` (with the same Idempotency-Key, a retried POST is safe)",
}
EXAMPLE_TIME = "2026-12-01T09:30:00Z"
EXAMPLE_ID = "0f6c7a0e-6f7b-4b44-9a8e-3b5d0d7f1c2a"
# What a string field of this name looks like, where its model gives no example.
NAMED_EXAMPLES: dict[str, Any] = {
    "user_id": "42",
    "email": "ada@example.com",
    "phone": "+14155550100",
    "timezone": "Europe/Berlin",
    "locale": "en",
    "channel": "push",
    "platform": "ios",
    "provider": "apns",
    "category": "billing",
    "priority": "normal",
    "title": "Payment received",
    "body": "€12.00, thank you",
    "target": "ab…ab",
    "status": "sent",
    "state": "sent",
    "template": "welcome",
    "topic": "release-notes",
    "name": "welcome",
    "address": "ada@example.com",
    "reason": "bounce: permanent",
    "provider_message_id": "projects/acme/messages/0:1701423000",
    "last_error": None,
    "token": "hk_7b1a6b046a3e1a91_…",
}


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")
    field: str | None = Field(default=None, examples=["email"])
    message: str = Field(examples=["value is not a valid email address"])
    type: str | None = Field(default=None, examples=["value_error"])


class ErrorBody(BaseModel):
    code: str = Field(examples=["invalid"])
    message: str = Field(examples=["email: value is not a valid email address"])
    details: list[ErrorDetail] = Field(default_factory=list)


class ErrorResponse(BaseModel):
    """Every error Herald answers."""

    error: ErrorBody


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for the error statuses a route answers beyond those `install` infers
    (409 on an idempotent POST, 404 on a lookup without path parameters, ...)."""
    return {
        status: {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[status]}
        for status in statuses
    }


def install(app: FastAPI, routes: Sequence[APIRoute]) -> None:
    """Finish the document FastAPI writes for `routes` (once, when first asked)."""
    write = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            finish(write(), routes)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def operation_id(route: APIRoute) -> str:
    return route.name


def finish(document: dict[str, Any], routes: Sequence[APIRoute]) -> None:
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.update(_error_schemas())
    components["securitySchemes"] = {
        SECURITY_SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key (`herald keys create`), or for a user's inbox "
            "routes that user's inbox token",
        }
    }
    by_operation = {
        (method.lower(), route.path_format): route
        for route in routes
        if route.include_in_schema
        for method in route.methods or ()
    }
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            route = by_operation.get((method, path))
            if route is not None:
                _finish_operation(operation, route, schemas)
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)


def _error_schemas() -> dict[str, Any]:
    schema = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    definitions = schema.pop("$defs", {})
    return {"ErrorResponse": schema, **definitions}


def _finish_operation(operation: dict[str, Any], route: APIRoute, schemas: dict[str, Any]) -> None:
    rule = scope_rule(route.dependant)
    authenticated = rule not in (None, "public")
    operation["security"] = [{SECURITY_SCHEME: []}] if authenticated else []
    if authenticated and rule:
        needs = f"Requires an API key with the `{rule.split(':')[-1]}` scope (or `admin`)"
        if rule.startswith("inbox"):
            needs += ", or the user's own inbox token"
        operation["description"] = f"{operation.get('description', '').strip()}\n\n{needs}.".strip()
    operation.setdefault("summary", route.name.replace("_", " ").capitalize())
    responses = operation.setdefault("responses", {})
    for status in _error_statuses(route, authenticated, operation):
        responses[str(status)] = {
            "description": ERROR_DESCRIPTIONS[status],
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}
            },
        }
    for media in _json_media(operation.get("requestBody", {}).get("content", {})):
        media.setdefault("example", example_of(media.get("schema", {}), schemas))
    for status, response in responses.items():
        if status.startswith("2"):
            for media in _json_media(response.get("content", {})):
                media.setdefault("example", example_of(media.get("schema", {}), schemas))


def _json_media(content: dict[str, Any]) -> list[dict[str, Any]]:
    return [media for kind, media in content.items() if kind.endswith("json")]


def _error_statuses(route: APIRoute, authenticated: bool, operation: dict[str, Any]) -> set[int]:
    responses = operation.get("responses", {})
    statuses = {int(s) for s in responses if s.isdigit() and int(s) >= 400}
    statuses.add(503)
    if authenticated:
        statuses |= {401, 403, 429}
    dependant = route.dependant
    if dependant.path_params:
        statuses.add(404)
    if dependant.query_params or dependant.header_params or dependant.path_params:
        statuses.add(422)
    if "requestBody" in operation:  # a body FastAPI reads, or one a route parses itself
        statuses |= {400, 413, 422}
    if route.body_field is not None:
        statuses.add(415)  # herald.api.app.JsonOnly (webhooks take their providers' types)
    return statuses


def example_of(schema: dict[str, Any], schemas: dict[str, Any], depth: int = 0) -> Any:
    """An example for `schema`: its own, else one built from its parts."""
    if "$ref" in schema:
        schema = schemas.get(schema["$ref"].rsplit("/", 1)[-1], {})
    for key in ("example", "default"):
        if key in schema and schema[key] is not None:
            return schema[key]
    if schema.get("examples"):
        return schema["examples"][0]
    if depth > 6:
        return None
    for key in ("anyOf", "oneOf", "allOf"):
        options = [s for s in schema.get(key, []) if s.get("type") != "null"]
        if options:
            return example_of(options[0], schemas, depth + 1)
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        return {
            name: _field_example(name, part, schemas, depth)
            for name, part in schema.get("properties", {}).items()
        }
    if kind == "array":
        return [example_of(schema.get("items", {}), schemas, depth + 1)]
    if "enum" in schema:
        return schema["enum"][0]
    return _scalar_example(schema)


def _field_example(name: str, schema: dict[str, Any], schemas: dict[str, Any], depth: int) -> Any:
    own = example_of(schema, schemas, depth + 1)
    if own == "string" or (own is None and name in NAMED_EXAMPLES):
        if name in NAMED_EXAMPLES:
            return NAMED_EXAMPLES[name]
        if name == "id" or name.endswith("_id"):
            return EXAMPLE_ID
    return own


def _scalar_example(schema: dict[str, Any]) -> Any:
    kind, form = schema.get("type"), schema.get("format")
    if kind == "string":
        return {
            "date-time": EXAMPLE_TIME,
            "email": "ada@example.com",
            "uri": "https://example.com",
        }.get(form or "", "string")
    return {"integer": 1, "number": 1.5, "boolean": True}.get(str(kind))


def updated(
    model: type[BaseModel], description: str = "it existed: updated"
) -> dict[int | str, dict[str, Any]]:
    """`responses=` of an upsert declared with `status_code=201`: 201 when it created,
    200 (this) when the thing was already there."""
    return {200: {"model": model, "description": description}}
