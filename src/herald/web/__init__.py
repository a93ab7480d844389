"""The pages people open, served by Herald itself: the operator console (/console), the
`<herald-inbox>` element (/static/herald-inbox.js) and the preference center (/preferences).

Server-side rendered (Jinja2, autoescaped), no framework on the client and nothing from
another origin, so every page works offline under a strict Content-Security-Policy."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI


def install(app: FastAPI) -> None:
    """The pages' routes and their security headers, on the API's application."""
    from herald.web import assets, console, preferences
    from herald.web.headers import PageHeaders

    for module in (console, preferences, assets):
        app.include_router(module.router)
    app.add_middleware(PageHeaders)
