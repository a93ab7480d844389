"""Rendering: one Jinja2 environment (autoescaped: user text always shows as text) over the
package's templates."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, StrictUndefined

from herald import __version__

ENVIRONMENT = Environment(
    loader=PackageLoader("herald.web", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
ASSET_VERSION = __version__


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "—"


ENVIRONMENT.filters["when"] = _when
ENVIRONMENT.globals.update(
    asset_version=ASSET_VERSION, session=None, nav=(), section="", flash=None
)


def render(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = ENVIRONMENT.get_template(template).render(**context)
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})
