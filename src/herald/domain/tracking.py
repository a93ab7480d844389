"""Email engagement tracking: turn an email's HTML into tracked HTML (an open pixel, and
links rewritten through click redirects). Pure: the URLs come from the caller, which
signs them (a redirect goes only to the URL that was signed, so there is no open
redirect)."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# <a ... href="..."> (either quote); the value is HTML-escaped text.
_LINK = re.compile(r"""(<a\b[^>]*?\bhref\s*=\s*)(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
_TRACKED_SCHEMES = ("http://", "https://")


@dataclass(frozen=True, slots=True)
class EmailTracking:
    """A category's switches (PUT /v1/categories/{name} {"tracking": {...}})."""

    opens: bool = True
    clicks: bool = True


@dataclass(frozen=True, slots=True)
class TrackedLinks:
    """One delivery's signed tracking URLs."""

    open_url: str
    click_url: Callable[[str], str]


# delivery id -> its tracking URLs (the runtime signs them)
EmailLinks = Callable[[str], TrackedLinks]
# an email payload -> the HTML part it is sent with (the providers' email layout)
EmailHtml = Callable[[Mapping[str, Any]], str]


def tracked_email(
    payload: dict[str, object],
    tracking: EmailTracking,
    links: TrackedLinks,
    compose: EmailHtml | None = None,
) -> dict[str, object]:
    """An email payload with its HTML tracked as the category says (the unsubscribe
    link is left as it is); with tracking off, unchanged. With `compose`, the HTML part is
    made here (the layout around a plain title and body, or a template's fragment), so
    an email whose HTML would otherwise be made at send time is tracked too; the payload
    then says `layout: false`, and the provider sends that HTML as it is."""
    if not (tracking.opens or tracking.clicks):
        return payload
    if compose is not None:
        payload = {**payload, "html": compose(payload), "layout": False}
    source = payload.get("html")
    if not isinstance(source, str):
        return payload
    unsubscribe = payload.get("unsubscribe_url")
    tracked = track_html(
        source,
        links.open_url if tracking.opens else None,
        links.click_url if tracking.clicks else None,
        keep=lambda url: url == unsubscribe,
    )
    return {**payload, "html": tracked}


def track_html(
    source: str,
    open_url: str | None,
    click_url: Callable[[str], str] | None,
    *,
    keep: Callable[[str], bool] = lambda _url: False,
) -> str:
    """`source` with every http(s) link sent through `click_url(link)` (unless `keep`
    says to leave it, e.g. the unsubscribe link) and, with `open_url`, a 1x1 image before
    </body> (or at the end)."""
    tracked = source
    if click_url is not None:

        def rewrite(match: re.Match[str]) -> str:
            url = html.unescape(match.group(3)).strip()
            if not url.lower().startswith(_TRACKED_SCHEMES) or keep(url):
                return match.group(0)
            quote = match.group(2)
            return f"{match.group(1)}{quote}{html.escape(click_url(url), quote=True)}{quote}"

        tracked = _LINK.sub(rewrite, tracked)
    if open_url is not None:
        pixel = (
            f'<img src="{html.escape(open_url, quote=True)}" width="1" height="1" alt="" '
            'style="display:none;border:0;width:1px;height:1px">'
        )
        ends = list(_BODY_END.finditer(tracked))
        if ends:
            at = ends[-1].start()
            tracked = tracked[:at] + pixel + tracked[at:]
        else:
            tracked += pixel
    return tracked
