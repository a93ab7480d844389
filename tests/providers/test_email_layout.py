"""The HTML part every email gets (email_layout.compose_html): the default layout around
subject and text, escaped; the footer's links; branding; a template's html in or out."""

from __future__ import annotations

from typing import Any

import pytest

from herald.providers.email_layout import EmailBranding, compose_html, uses_layout

BRAND = EmailBranding(
    name="Acme & Co", logo_url="https://cdn.acme.example/logo.png", color="#ff0066"
)


def test_subject_and_text_are_escaped_into_the_layout() -> None:
    html = compose_html(
        {"subject": "<script>alert(1)</script>", "text": "One <b>\nTwo\n\nThree & four"},
        EmailBranding(),
    )
    assert html.startswith("<!DOCTYPE html>")
    assert "<script>" not in html
    assert "<h1>&lt;script&gt;alert(1)&lt;/script&gt;</h1>" in html
    assert '<p style="margin:0 0 16px">One &lt;b&gt;<br>Two</p>' in html
    assert '<p style="margin:0 0 16px">Three &amp; four</p>' in html
    assert 'name="viewport"' in html  # responsive
    assert 'role="presentation"' in html  # layout tables are not read as data tables
    assert 'lang="en"' in html


@pytest.mark.parametrize(
    ("links", "shown"),
    [
        ({}, []),
        ({"unsubscribe_url": "https://h.example/u?t=a&c=b"}, ["Unsubscribe"]),
        (
            {
                "unsubscribe_url": "https://h.example/u?t=a&c=b",
                "preferences_url": "https://h.example/prefs/42",
            },
            ["Notification preferences", "Unsubscribe"],
        ),
    ],
)
def test_the_footer_links_what_the_payload_gives(links: dict[str, str], shown: list[str]) -> None:
    html = compose_html({"subject": "Hi", "text": "x", **links}, EmailBranding())
    assert [
        label for label in ("Notification preferences", "Unsubscribe") if f">{label}</a>" in html
    ] == shown
    if "unsubscribe_url" in links:
        assert 'href="https://h.example/u?t=a&amp;c=b"' in html
    if "preferences_url" in links:
        assert 'href="https://h.example/prefs/42"' in html


def test_branding_comes_from_the_deployment() -> None:
    html = compose_html({"subject": "Hi", "text": "x"}, BRAND)
    assert '<img src="https://cdn.acme.example/logo.png" alt="Acme &amp; Co"' in html
    assert "background: #ff0066" in html


@pytest.mark.parametrize(
    ("payload", "wrapped"),
    [
        ({"html": "<p>fragment</p>"}, True),
        ({"html": "<html><body>mine</body></html>"}, False),
        ({"html": "<p>fragment</p>", "layout": False}, False),
        ({"html": "<html><body>mine</body></html>", "layout": True}, True),
    ],
)
def test_a_template_html_opts_in_or_out(payload: dict[str, Any], wrapped: bool) -> None:
    html = compose_html({"subject": "Hi", "text": "x", **payload}, EmailBranding())
    assert html.startswith("<!DOCTYPE html>") is wrapped
    assert payload["html"] in html  # the template's own markup, not escaped again
    assert uses_layout(payload["html"], payload.get("layout")) is wrapped
