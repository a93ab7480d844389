"""The pages in a real browser (Debian's chromium through Playwright) against a real
`herald serve`: the console, the <herald-inbox> element and the preference center. Each
test also takes screenshots of what it shows (docs/ keeps current ones)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Page, Route, expect

from tests.fixtures.browser import shoot
from tests.fixtures.serve import HeraldLauncher, HeraldProcess

pytestmark = [pytest.mark.browser, pytest.mark.slow]

USER = {"email": "ada@example.com", "phone": "+14155550100", "timezone": "Europe/Berlin"}


def until(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll `check` (a plain HTTP read) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"not met within {timeout}s; last value: {last!r}")


@pytest.fixture
def server(launch_herald: HeraldLauncher) -> HeraldProcess:
    return launch_herald("serve")


@pytest.fixture
def api(server: HeraldProcess) -> httpx.Client:
    client = server.client()
    client.put("/v1/users/42", json=USER).raise_for_status()
    return client


def sign_in(page: Page, server: HeraldProcess, key: str | None = None) -> None:
    page.goto(f"{server.url}/console")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("API key").fill(key or server.key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Notifications")).to_be_visible()


def send(api: httpx.Client, **fields: Any) -> str:
    response = api.post("/v1/notifications", json={"user_id": "42", **fields})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def deliveries(api: httpx.Client, notification_id: str, *states: str) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]] | None:
        found = api.get(f"/v1/notifications/{notification_id}").json()["deliveries"]
        return found if found and all(d["status"] in states for d in found) else None

    result: list[dict[str, Any]] = until(check)
    return result


def test_sign_in_sign_out_and_a_forged_form_is_refused(
    browser_page: Page, server: HeraldProcess, tmp_path: Path
) -> None:
    page = browser_page
    page.goto(f"{server.url}/console/dead-letters")
    expect(page).to_have_url(f"{server.url}/console/sign-in?next=%2Fconsole%2Fdead-letters")
    shoot(page, "sign-in", tmp_path)
    page.get_by_label("API key").fill("hk_not_a_key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not valid")

    page.get_by_label("API key").fill(server.key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Dead letters")).to_be_visible()
    cookie = next(c for c in page.context.cookies() if c["name"] == "herald_console")
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"

    # A form whose CSRF token is not the session's is refused, and changes nothing.
    page.locator("form.signout input[name=csrf]").evaluate("input => { input.value = 'forged' }")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("CSRF")
    page.goto(f"{server.url}/console/notifications")
    expect(page.get_by_role("heading", name="Notifications")).to_be_visible()

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_text("You are signed out.")).to_be_visible()
    page.goto(f"{server.url}/console/notifications")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


def test_finding_a_notification_and_reading_its_timeline(
    browser_page: Page, server: HeraldProcess, api: httpx.Client, tmp_path: Path
) -> None:
    page = browser_page
    api.post("/v1/users/42/devices", json={"platform": "ios", "token": "ab" * 32})
    send(api, category="billing", title="Payment received", body="€12.00, thank you")
    hostile = send(api, category="security", title="<script>document.title='pwned'</script>")
    deliveries(api, hostile, "sent", "delivered")
    sign_in(page, server)
    page.get_by_label("User id").fill("42")
    page.get_by_label("Category").fill("security")
    page.get_by_role("button", name="Search").click()
    link = page.get_by_role("link", name="<script>document.title='pwned'</script>")
    expect(link).to_be_visible()  # shown as text, not run
    shoot(page, "notifications", tmp_path)
    link.click()
    expect(page.get_by_role("heading", level=1)).to_have_text(
        "<script>document.title='pwned'</script>"
    )
    assert page.title() != "pwned"  # the title tag holds it as text; it did not run
    timeline = page.get_by_role("list", name="Delivery log of this delivery").first
    expect(timeline).to_contain_text("queued")
    expect(timeline).to_contain_text("sending")
    expect(timeline).to_contain_text("sent")
    shoot(page, "notification", tmp_path)

    page.goto(f"{server.url}/console/notifications?user_id=42")
    page.get_by_role("link", name="Payment received").click()
    expect(page.get_by_text("€12.00, thank you")).to_be_visible()
    page.get_by_role("link", name="42").first.click()
    expect(page.get_by_role("heading", name="User 42")).to_be_visible()
    expect(page.get_by_role("heading", name="Devices")).to_be_visible()
    shoot(page, "user", tmp_path)
    page.goto(f"{server.url}/console/notifications")
    shoot(page, "notifications-phone", tmp_path, phone=True)


def _fail_delivery(server: HeraldProcess, delivery_id: str) -> None:
    """What a worker does when the retries are used up (embedded SQLite, beside the server)."""
    database = Path(server.env["HERALD_DATA_DIR"]) / "herald.db"
    with sqlite3.connect(database, timeout=30) as db:
        db.execute(
            "UPDATE deliveries SET state = 'failed', "
            "last_error = 'dead-lettered after 5 attempts: 503 from provider' WHERE id = ?",
            (delivery_id,),
        )


def test_replaying_a_dead_letter(
    browser_page: Page, server: HeraldProcess, api: httpx.Client, tmp_path: Path
) -> None:
    page = browser_page
    notification_id = send(api, title="Your code is 123456", channels=["sms"])
    (delivery,) = deliveries(api, notification_id, "sent")
    _fail_delivery(server, delivery["id"])
    sign_in(page, server)
    page.get_by_role("link", name="Dead letters").click()
    expect(page.get_by_role("cell", name="dead-lettered after 5 attempts")).to_be_visible()
    shoot(page, "dead-letters", tmp_path)
    page.get_by_role("button", name="Replay", exact=True).click()
    expect(page.get_by_role("status")).to_have_text("Replayed: the delivery is queued again.")
    expect(page.get_by_text("The dead-letter queue is empty.")).to_be_visible()
    deliveries(api, notification_id, "sent")
    sends = api.get("/v1/sandbox/messages", params={"user_id": "42"}).json()["items"]
    assert len(sends) == 2  # the first send and the replay's


def test_a_read_key_sees_the_queue_but_has_no_replay(
    browser_page: Page, server: HeraldProcess, api: httpx.Client
) -> None:
    page = browser_page
    notification_id = send(api, title="Code", channels=["sms"])
    (delivery,) = deliveries(api, notification_id, "sent")
    _fail_delivery(server, delivery["id"])
    reader = api.post("/v1/keys", json={"scopes": ["read"], "name": "support"}).json()["key"]
    sign_in(page, server, reader)
    page.get_by_role("link", name="Dead letters").click()
    expect(page.get_by_role("cell", name="dead-lettered after 5 attempts")).to_be_visible()
    expect(page.get_by_role("button", name="Replay")).to_have_count(0)
    page.goto(f"{server.url}/console/suppressions")
    expect(page.get_by_role("button", name="Suppress")).to_have_count(0)


def _open_inbox(page: Page, server: HeraldProcess) -> Any:
    sign_in(page, server)
    page.goto(f"{server.url}/console/inbox-demo?user=42")
    inbox = page.locator("herald-inbox")
    expect(inbox.locator(".bell")).to_be_visible()
    return inbox


def test_an_item_stored_while_the_inbox_stream_connects_is_shown(
    browser_page: Page, server: HeraldProcess, api: httpx.Client
) -> None:
    """The inbox is empty when the element loads its first page, so the stream has no item
    to replay from; an item stored before the stream subscribes must still show."""
    page = browser_page
    held: list[Route] = []
    page.route("**/inbox/stream?*", lambda route: held.append(route))  # it waits there
    inbox = _open_inbox(page, server)
    for _ in range(500):  # Playwright calls the route handler while the page is waited on
        if held:
            break
        page.wait_for_timeout(20)
    assert held, "the element opened no stream within 10 s"
    send(api, title="While you connected", channels=["in_app"])
    until(lambda: api.get("/v1/users/42/inbox").json()["unread_count"] == 1)
    held[0].continue_()
    expect(inbox.locator(".badge")).to_have_text("1")
    inbox.locator(".bell").click()
    expect(inbox.get_by_text("While you connected")).to_be_visible()


def test_the_inbox_element_gets_a_live_item_and_marks_it_read(
    browser_page: Page, server: HeraldProcess, api: httpx.Client, tmp_path: Path
) -> None:
    page = browser_page
    inbox = _open_inbox(page, server)
    badge = inbox.locator(".badge")
    expect(badge).to_be_hidden()
    send(api, title="Your order shipped", body="Arrives Thursday", channels=["in_app"])
    expect(badge).to_have_text("1")
    inbox.locator(".bell").click()
    expect(inbox.get_by_text("Your order shipped")).to_be_visible()
    shoot(page, "inbox-element", tmp_path)
    inbox.get_by_role("button", name="Mark read").click()
    expect(badge).to_be_hidden()
    unread = api.get("/v1/users/42/inbox").json()["unread_count"]
    assert unread == 0


def test_the_inbox_element_loses_nothing_across_a_server_restart(
    browser_page: Page, server: HeraldProcess, api: httpx.Client
) -> None:
    page = browser_page
    inbox = _open_inbox(page, server)
    send(api, title="Before the restart", channels=["in_app"])
    expect(inbox.locator(".badge")).to_have_text("1")

    # The stream cannot reconnect until the item sent while it was away is stored.
    refused: list[str] = []
    page.route(
        "**/inbox/stream**", lambda route: (refused.append(route.request.url), route.abort())
    )
    server.stop()
    server.start()
    for _ in range(150):  # the element tries again by itself (route handlers run while waiting)
        if refused:
            break
        page.wait_for_timeout(200)
    assert refused, "the element did not try to reconnect"
    with server.client() as client:
        during = send(client, title="While it was away", channels=["in_app"])
        deliveries(client, during, "delivered")
    page.unroute("**/inbox/stream**")

    expect(inbox.locator(".badge")).to_have_text("2", timeout=30_000)
    inbox.locator(".bell").click()
    expect(inbox.get_by_text("While it was away")).to_have_count(1)
    expect(inbox.get_by_text("Before the restart")).to_have_count(1)
    # Live again: a third item arrives over the new stream.
    with server.client() as client:
        send(client, title="After the restart", channels=["in_app"])
    expect(inbox.locator(".badge")).to_have_text("3")


def test_the_preference_center_turns_email_off_for_a_category(
    browser_page: Page, server: HeraldProcess, api: httpx.Client, tmp_path: Path
) -> None:
    page = browser_page
    first = send(api, category="news", title="Weekly news", channels=["email"])
    deliveries(api, first, "sent")
    (message,) = api.get("/v1/sandbox/messages", params={"user_id": "42"}).json()["items"]
    link = urlsplit(message["payload"]["preferences_url"])
    page.goto(f"{server.url}{link.path}?{link.query}")
    expect(page.get_by_role("heading", name="Your notification settings")).to_be_visible()
    email_for_news = page.get_by_label("Email for news")
    expect(email_for_news).to_be_checked()
    shoot(page, "preferences", tmp_path)
    email_for_news.uncheck()
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_contain_text("Saved")
    expect(page.get_by_label("Email for news")).not_to_be_checked()

    second = send(api, category="news", title="Next week's news", channels=["email"])
    (skipped,) = deliveries(api, second, "skipped")
    assert skipped["channel"] == "email"

    page.goto(f"{server.url}/preferences?token={link.query.split('=', 1)[1][:-4]}AAAA")
    expect(page.get_by_role("heading", name="This link is not valid")).to_be_visible()
    shoot(page, "preferences-invalid-link", tmp_path)


def test_broadcast_progress_and_provider_health(
    browser_page: Page, server: HeraldProcess, api: httpx.Client, tmp_path: Path
) -> None:
    page = browser_page
    for n in range(5):
        api.put(f"/v1/users/b{n}", json={"email": f"b{n}@example.com"})
        api.put(f"/v1/users/b{n}/topics/storms")
    created = api.post(
        "/v1/broadcasts",
        json={"topic": "storms", "notification": {"title": "Storm warning", "channels": ["email"]}},
        headers={"Idempotency-Key": "storm-1"},
    )
    assert created.status_code == 202, created.text
    sign_in(page, server)
    page.get_by_role("link", name="Broadcasts").click()
    page.get_by_role("link", name="Storm warning").click()
    expect(page.locator('[data-field="live"]')).to_have_text("Final.", timeout=30_000)
    expect(page.locator('[data-field="routed"]')).to_have_text("5")
    shoot(page, "broadcast", tmp_path)
    page.get_by_role("link", name="Providers").click()
    expect(page.get_by_role("rowheader", name="sandbox")).to_be_visible()
    expect(page.get_by_role("img", name="Deliveries per minute by state")).to_be_visible()
    shoot(page, "providers", tmp_path)
    page.get_by_role("link", name="Suppressions").click()
    page.get_by_label("Address or number").fill("bounced@example.com")
    page.get_by_label("Reason").fill("hard bounce, confirmed by support")
    page.get_by_role("button", name="Suppress").click()
    expect(page.get_by_role("cell", name="bounced@example.com")).to_be_visible()
    shoot(page, "suppressions", tmp_path)
    page.get_by_role("button", name="Lift").click()
    expect(page.get_by_text("Nothing is suppressed.")).to_be_visible()


def test_a_workflow_run_and_its_steps_live(
    browser_page: Page, server: HeraldProcess, api: httpx.Client, tmp_path: Path
) -> None:
    page = browser_page
    definition = {
        "category": "orders",
        "steps": [
            {"id": "confirm", "type": "send", "channels": ["in_app"]},
            {"id": "payment", "type": "wait", "event": "paid", "timeout_seconds": 3600},
            {"id": "thanks", "type": "send", "channels": ["in_app"], "if": {"event": "paid"}},
        ],
    }
    api.put("/v1/workflows/checkout", json=definition).raise_for_status()
    triggered = api.post(
        "/v1/workflows/checkout/trigger", json={"user_id": "42", "title": "Order 1001"}
    )
    assert triggered.status_code == 202, triggered.text
    run_id = triggered.json()["id"]
    sign_in(page, server)
    page.get_by_role("link", name="Workflow runs").click()
    expect(page.get_by_role("heading", name="Workflow runs")).to_be_visible()
    page.locator(f'a[href="/console/workflow-runs/{run_id}"]').click()
    steps = page.locator('[data-field="steps"]')
    waiting = steps.locator('tr[data-step="payment"]')
    expect(waiting).to_contain_text("waiting", timeout=30_000)
    expect(steps.locator('tr[data-step="confirm"]')).to_contain_text("done")
    expect(page.locator('[data-field="waiting_for"]')).to_have_text("paid")
    shoot(page, "workflow-run", tmp_path)

    # The event resumes the run; the open page follows it over Server-Sent Events.
    api.post("/v1/events", json={"user_id": "42", "name": "paid"}).raise_for_status()
    expect(page.locator('[data-field="live"]')).to_have_text("Final.", timeout=30_000)
    expect(page.locator('[data-field="status"]')).to_have_text("completed")
    expect(steps.locator('tr[data-step="thanks"]')).to_contain_text("done")
    steps.locator('tr[data-step="thanks"] a').click()  # the notification that step made
    expect(page.get_by_role("heading", name="Order 1001")).to_be_visible()
    expect(page.get_by_role("link", name="checkout")).to_be_visible()
