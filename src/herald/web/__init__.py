"""The pages people open, served by Herald itself: the operator console (/console), the
`<herald-inbox>` element (/static/herald-inbox.js) and the preference center (/preferences).

Server-side rendered (Jinja2, autoescaped), no framework on the client and nothing from
another origin, so every page works offline under a strict Content-Security-Policy."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import APIRouter, FastAPI


def page_routers() -> list[APIRouter]:
    """The console's, the preference center's and the static assets' routes (imported
    here, not at the top: the pages import the API, which installs them)."""
    from herald.web import assets, console, preferences

    return [console.router, preferences.router, assets.router]


def install(app: FastAPI) -> None:
    """The pages' routes and their security headers, on the API's application."""
    from herald.web.headers import PageHeaders

    for router in page_routers():
        app.include_router(router)
    app.add_middleware(PageHeaders)
