"""Email tracking: the pure HTML rewrite."""

from __future__ import annotations

from herald.domain.tracking import EmailTracking, TrackedLinks, track_html, tracked_email


def click(url: str) -> str:
    return f"https://h.example/c?u={url}"


def test_http_links_go_through_the_redirect_and_the_pixel_goes_before_the_body_end() -> None:
    source = (
        '<body><a class="x" href="https://a.example/?p=1&amp;q=2">a</a>'
        "<a href='mailto:x@y'>m</a><a href=\"#top\">t</a></body>"
    )
    tracked = track_html(source, "https://h.example/o.gif", click)
    assert 'href="https://h.example/c?u=https://a.example/?p=1&amp;q=2"' in tracked
    assert "href='mailto:x@y'" in tracked
    assert 'href="#top"' in tracked
    assert tracked.endswith(
        '<img src="https://h.example/o.gif" width="1" height="1" alt="" '
        'style="display:none;border:0;width:1px;height:1px"></body>'
    )


def test_the_unsubscribe_link_and_a_category_without_tracking_are_left_alone() -> None:
    links = TrackedLinks("https://h.example/o.gif", click)
    payload: dict[str, object] = {
        "html": '<a href="https://h.example/unsub">u</a>',
        "unsubscribe_url": "https://h.example/unsub",
    }
    assert tracked_email(payload, EmailTracking(opens=False), links)["html"] == payload["html"]
    assert tracked_email(payload, EmailTracking(False, False), links) is payload
    assert tracked_email({"text": "plain"}, EmailTracking(), links) == {"text": "plain"}
