"""The web pages' static files, from the package: /static/<name>. The inbox element also
has a versioned URL (/static/herald-inbox-1.js, its major version) that may be cached for
a year; every other URL is revalidated by its ETag."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from fastapi import APIRouter, Request, Response

from herald.api.errors import not_found

INBOX_ELEMENT_VERSION = "1"
TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
# URL name -> file in herald/web/static
FILES = {
    "console.css": "console.css",
    "console.js": "console.js",
    "herald-inbox.js": "herald-inbox.js",
    f"herald-inbox-{INBOX_ELEMENT_VERSION}.js": "herald-inbox.js",
}
IMMUTABLE = {f"herald-inbox-{INBOX_ELEMENT_VERSION}.js"}

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


@cache
def asset(name: str) -> Asset | None:
    file = FILES.get(name)
    if file is None:
        return None
    body = resources.files("herald.web").joinpath("static", file).read_bytes()
    suffix = file[file.rfind(".") :]
    return Asset(body, TYPES[suffix], f'"{hashlib.sha256(body).hexdigest()[:20]}"')


@router.get("/static/{name}")
async def static_file(name: str, request: Request) -> Response:
    found = asset(name)
    if found is None:
        raise not_found("file")
    cache_control = (
        "public, max-age=31536000, immutable" if name in IMMUTABLE else "public, no-cache"
    )
    headers = {"ETag": found.etag, "Cache-Control": cache_control}
    # Cross-origin pages load the element as a module script.
    headers["Access-Control-Allow-Origin"] = "*"
    if request.headers.get("if-none-match") == found.etag:
        return Response(status_code=304, headers=headers)
    return Response(found.body, media_type=found.media_type, headers=headers)
