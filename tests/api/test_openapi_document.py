"""The OpenAPI document is one a client can be generated from: every operation has its
security, a typed success schema, Herald's error model on each error status it can
answer, and an example; /docs and /redoc load without a CDN."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from herald.api.app import create_app
from herald.config import Settings
from herald.runtime import Runtime

ERROR_REF = "#/components/schemas/ErrorResponse"
NOT_JSON = {"text/plain", "text/event-stream", "image/gif"}


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("openapi"))
    return create_app(Runtime.from_settings(settings)).openapi()


def operations(document: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{method.upper()} {path}", operation)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    ]


def problems_of(operation: dict[str, Any], document: dict[str, Any]) -> list[str]:
    found = []
    if "security" not in operation:
        found.append("no security")
    if not operation.get("summary"):
        found.append("no summary")
    responses = operation["responses"]
    successes = {s: r for s, r in responses.items() if s.startswith("2")}
    redirects = [r for s, r in responses.items() if s.startswith("3")]
    if not successes and not any("Location" in r.get("headers", {}) for r in redirects):
        found.append("no 2xx (nor a redirect with its Location)")
    for status, response in successes.items():
        for kind, media in response.get("content", {}).items():
            schema = media.get("schema", {})
            if kind in NOT_JSON:
                continue
            if "$ref" not in schema and schema.get("type") not in ("array",):
                found.append(f"{status} is not a typed model: {schema}")
            if "example" not in media:
                found.append(f"{status} has no example")
    body = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if body is not None and "example" not in body:
        found.append("request body has no example")
    errors = {s: r for s, r in responses.items() if int(s) >= 400}
    if "503" not in errors:
        found.append("no 503")
    if operation.get("security") and not {"401", "403", "429"} <= set(errors):
        found.append("authenticated without 401/403/429")
    if body is not None and not {"400", "413", "422"} <= set(errors):
        found.append("takes a body without 400/413/422")
    for status, response in errors.items():
        schema = response.get("content", {}).get("application/json", {}).get("schema")
        if schema != {"$ref": ERROR_REF}:
            found.append(f"{status} is not the error model")
    return found


def test_every_operation_is_complete(document: dict[str, Any]) -> None:
    incomplete = {
        name: problems
        for name, operation in operations(document)
        if (problems := problems_of(operation, document))
    }
    assert incomplete == {}


def test_the_walk_catches_an_incomplete_operation(document: dict[str, Any]) -> None:
    bare = {"responses": {"200": {"content": {"application/json": {"schema": {}}}}}}
    redirect = {"security": [], "summary": "x", "responses": {"302": {}, "503": {}}}
    assert "no 2xx (nor a redirect with its Location)" in problems_of(redirect, document)
    assert set(problems_of(bare, document)) >= {
        "no security",
        "no summary",
        "no 503",
    }


def test_the_bearer_scheme_and_the_error_model(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"]["scheme"] == "bearer"
    assert "HTTPValidationError" not in document["components"]["schemas"]
    error = document["components"]["schemas"]["ErrorResponse"]
    assert error["required"] == ["error"]
    public = dict(operations(document))["GET /healthz"]
    assert public["security"] == []


def test_success_codes_say_what_the_routes_answer(document: dict[str, Any]) -> None:
    ops = dict(operations(document))
    assert {"200", "201"} <= set(ops["PUT /v1/users/{user_id}"]["responses"])
    assert {"200", "201"} <= set(ops["POST /v1/users/{user_id}/devices"]["responses"])
    assert "202" in ops["POST /v1/notifications"]["responses"]
    assert "409" in ops["POST /v1/notifications"]["responses"]


async def test_docs_and_redoc_load_their_assets_from_herald(api: httpx.AsyncClient) -> None:
    for page in ("/docs", "/redoc"):
        html = (await api.get(page)).text
        assert "cdn" not in html.lower()
        for asset in (
            ("swagger-ui-bundle.js", "swagger-ui.css")
            if page == "/docs"
            else ("redoc.standalone.js",)
        ):
            url = f"/docs/assets/{asset}"
            assert url in html
            response = await api.get(url)
            assert response.status_code == 200
            assert len(response.content) > 10_000


def test_docs_api_md_names_the_document() -> None:
    guide = Path(__file__).resolve().parents[2] / "docs" / "api.md"
    assert "/openapi.json" in guide.read_text()


def test_examples_come_from_the_models_and_their_fields(document: dict[str, Any]) -> None:
    put_user = dict(operations(document))["PUT /v1/users/{user_id}"]
    request = put_user["requestBody"]["content"]["application/json"]["example"]
    assert request["timezone"] == "Europe/Berlin"  # UserIn's own example
    created = put_user["responses"]["201"]["content"]["application/json"]["example"]
    assert created["email"] == "ada@example.com"  # built from the field's name
    assert created["created_at"].endswith("Z")
