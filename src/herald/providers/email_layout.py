"""The HTML part of every email: `compose_html` is the one place it is made (SMTP, SES and
SendGrid all call it), so what is done to the finished HTML (open and click tracking)
is one call here.

Without a template's html, the subject and text are rendered into the default layout:
one centred 600-pixel card, responsive, light and dark, a heading and paragraphs, every
value escaped (Jinja2 with autoescape), and a footer with the preference-center and
unsubscribe links (payload `preferences_url`, `unsubscribe_url`). A template's html is
put into the same layout when it is a fragment, and sent as it is when it is a whole
document (`<html`); the template's `email_layout` (true or false) decides instead when set.
The deployment's name, logo and colours come from HERALD_EMAIL_BRAND_*.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import jinja2
from markupsafe import Markup

from herald.config import Settings

_WHOLE_DOCUMENT = re.compile(r"<html[\s>]", re.IGNORECASE)
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
PREHEADER_CHARS = 120


@dataclass(frozen=True, slots=True)
class EmailBranding:
    name: str = "Herald"
    logo_url: str | None = None
    color: str = "#1a56db"
    background: str = "#f4f5f7"

    @classmethod
    def from_settings(cls, settings: Settings) -> EmailBranding:
        return cls(
            name=settings.email_brand_name,
            logo_url=settings.email_brand_logo_url,
            color=settings.email_brand_color,
            background=settings.email_brand_background,
        )


@cache
def _layout() -> jinja2.Template:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("herald.providers", "email_templates"),
        autoescape=True,
        trim_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    return environment.get_template("layout.html")


def uses_layout(html: str | None, layout: bool | None) -> bool:
    if html is None:
        return True
    if layout is not None:
        return layout
    return not _WHOLE_DOCUMENT.search(html)


def paragraphs(text: str) -> list[list[str]]:
    """Blank lines part paragraphs, single newlines are line breaks."""
    return [block.strip().split("\n") for block in _PARAGRAPH_BREAK.split(text.strip()) if block]


def compose_html(payload: Mapping[str, Any], branding: EmailBranding, *, lang: str = "en") -> str:
    """The HTML part for an email payload {"subject", "text", "html"?, "layout"?,
    "unsubscribe_url"?, "preferences_url"?}."""
    html = payload.get("html")
    html = str(html) if html else None
    if not uses_layout(html, payload.get("layout")):
        assert html is not None
        return html
    subject = str(payload.get("subject") or "")
    text = str(payload.get("text") or "")
    return _layout().render(
        lang=lang,
        subject=subject,
        preheader=text[:PREHEADER_CHARS] if html is None else None,
        # A template's html was rendered with autoescape already: it is markup, not text.
        content=Markup(html) if html is not None else None,
        paragraphs=paragraphs(text),
        brand=branding,
        unsubscribe_url=payload.get("unsubscribe_url"),
        preferences_url=payload.get("preferences_url"),
    )
