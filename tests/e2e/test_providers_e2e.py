"""Herald as a user runs it: a real `herald serve` process configured only by environment
variables (FakeFleet.env), talking to every protocol-faithful fake over loopback: push
(FCM with OAuth, APNs over HTTP/2+TLS, Web Push with aes128gcm), email (SMTP through
aiosmtpd, SES through moto's server, SendGrid), SMS (Twilio) and the webhooks that close
the loop. Embedded backend only: the in-process suites cover PostgreSQL + Kafka.

The fakes run in the test's event loop, so everything the test does while Herald works
is async (the launcher itself runs in a thread)."""

from __future__ import annotations

import asyncio
import base64
import secrets
import shlex
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from email.message import EmailMessage
from html import escape
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

import tests.fixtures.serve as serve_fixture
from herald.fakes.runner import SENDER_ADDRESS, FakeFleet, free_tcp_port
from herald.providers.sendgrid.webhook import SENDGRID_SIGNATURE_HEADER
from herald.providers.twilio.webhook import twilio_signature
from tests.fixtures.herald import eventually
from tests.fixtures.serve import HeraldLauncher, HeraldProcess
from tests.providers.conftest import fcm_token

FINAL = {"sent", "delivered", "failed", "undeliverable", "skipped", "unknown"}


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[FakeFleet]:
    async with FakeFleet(tmp_path / "fakes") as running:
        yield running


async def launch(
    launch_herald: HeraldLauncher, env: dict[str, str], *, port: int | None = None
) -> HeraldProcess:
    """`herald serve` with `env` only. Starting it blocks, so it runs in a thread while the
    fakes keep serving in this loop. `port` pins the port (for HERALD_PUBLIC_URL)."""
    if port is None:
        return await asyncio.to_thread(launch_herald, "serve", env=env)
    original = serve_fixture.free_port
    serve_fixture.free_port = lambda: port
    try:
        return await asyncio.to_thread(launch_herald, "serve", env=env)
    finally:
        serve_fixture.free_port = original


def api_client(herald: HeraldProcess) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=herald.url, headers={"Authorization": f"Bearer {herald.key}"}, timeout=30
    )


async def ok(response: Awaitable[httpx.Response]) -> Any:
    answer = await response
    assert answer.status_code < 300, answer.text
    return answer.json()


async def notify(api: httpx.AsyncClient, **body: Any) -> str:
    answer = await ok(
        api.post("/v1/notifications", json=body, headers={"Idempotency-Key": uuid.uuid4().hex})
    )
    return str(answer["id"])


async def settled(
    api: httpx.AsyncClient,
    notification_id: str,
    expected: int,
    done: Callable[[dict[str, Any]], bool] = lambda d: d["status"] in FINAL,
    timeout: float = 20.0,
) -> dict[str, dict[str, Any]]:
    """The notification's deliveries by channel+provider once `expected` of them are done."""

    async def check() -> dict[str, dict[str, Any]] | None:
        notification = await ok(api.get(f"/v1/notifications/{notification_id}"))
        deliveries = notification["deliveries"]
        if len(deliveries) == expected and all(done(d) for d in deliveries):
            return {d["id"]: d for d in deliveries}
        return None

    result: dict[str, dict[str, Any]] = await eventually(check, timeout=timeout, interval=0.1)
    return result


async def events(api: httpx.AsyncClient, notification_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (
        await ok(api.get(f"/v1/notifications/{notification_id}/events"))
    )["items"]
    return items


# --------------------------------------------------------------------------- push


async def test_push_reaches_fcm_apns_and_web_push_once_each(
    fleet: FakeFleet, launch_herald: HeraldLauncher
) -> None:
    herald = await launch(launch_herald, fleet.env)
    android, ios, web = fcm_token(), secrets.token_hex(32), fleet.web_subscription()
    dead_android, dead_web = fcm_token(), fleet.web_subscription()
    fleet.fcm.fail(dead_android, "UNREGISTERED")
    fleet.webpush.unsubscribe(dead_web["endpoint"])  # the browser dropped it: 410 Gone

    async with api_client(herald) as api:
        await ok(api.put("/v1/users/ada", json={"timezone": "UTC", "locale": "en"}))
        devices = {}
        for name, body in {
            "android": {"platform": "android", "token": android},
            "ios": {"platform": "ios", "token": ios},
            "web": {"platform": "web", "subscription": web},
            "dead_android": {"platform": "android", "token": dead_android},
            "dead_web": {"platform": "web", "subscription": dead_web},
        }.items():
            devices[name] = (await ok(api.post("/v1/users/ada/devices", json=body)))["id"]
        notification_id = await notify(
            api,
            user_id="ada",
            category="orders",
            title="Order shipped",
            body="Your parcel is on its way",
            data={"order": "1001"},
            channels=["push"],
        )
        deliveries = await settled(api, notification_id, expected=5)
        log = await events(api, notification_id)
        listed = (await ok(api.get("/v1/users/ada/devices")))["items"]

    # Exactly one message on each platform, with the right payload.
    [fcm] = fleet.fcm.received
    [apns] = fleet.apns.received
    [webpush] = fleet.webpush.received
    assert fcm.message["token"] == android
    assert fcm.message["notification"] == {
        "title": "Order shipped",
        "body": "Your parcel is on its way",
    }
    fcm_delivery = fcm.message["data"]["herald_delivery_id"]
    assert fcm.message["data"]["order"] == "1001"
    assert apns.device_token == ios
    assert apns.payload["aps"]["alert"] == {
        "title": "Order shipped",
        "body": "Your parcel is on its way",
    }
    assert apns.payload["order"] == "1001"
    assert apns.headers["apns-topic"] == "com.example.herald"
    assert apns.headers["apns-id"] == apns.payload["herald_delivery_id"]
    assert webpush.endpoint == web["endpoint"]
    plaintext = orjson.loads(webpush.plaintext)  # decrypted by the fake with the browser key
    assert plaintext == {
        "title": "Order shipped",
        "body": "Your parcel is on its way",
        "data": {"order": "1001"},
        "delivery_id": plaintext["delivery_id"],
    }

    # The delivery log names each provider's message id.
    by_provider: dict[str, list[dict[str, Any]]] = {}
    for delivery in deliveries.values():
        by_provider.setdefault(delivery["provider"], []).append(delivery)
    sent = {d["provider"]: d for d in deliveries.values() if d["status"] == "sent"}
    assert set(sent) == {"fcm", "apns", "webpush"}
    assert sent["fcm"]["id"] == fcm_delivery
    assert sent["fcm"]["provider_message_id"].startswith("projects/herald-test/messages/")
    assert sent["apns"]["provider_message_id"] == apns.headers["apns-id"] == sent["apns"]["id"]
    assert sent["webpush"]["id"] == plaintext["delivery_id"]
    assert sent["webpush"]["provider_message_id"].startswith(f"{fleet.webpush.base_url}/m/")
    for delivery in sent.values():
        logged = [e for e in log if e["delivery_id"] == delivery["id"] and e["status"] == "sent"]
        assert logged[-1]["detail"]["provider_message_id"] == delivery["provider_message_id"]

    # The dead tokens: undeliverable, and their devices deactivated.
    dead = [d for d in deliveries.values() if d["status"] == "undeliverable"]
    assert sorted(d["provider"] for d in dead) == ["fcm", "webpush"]
    active = {device["id"]: device["active"] for device in listed}
    assert active == {
        devices["android"]: True,
        devices["ios"]: True,
        devices["web"]: True,
        devices["dead_android"]: False,
        devices["dead_web"]: False,
    }


# --------------------------------------------------------------------------- email and SMS

RECEIPT_TEMPLATE = {
    "default_locale": "en",
    "locales": {
        "en": {
            "email": {
                "subject": "Receipt for {{ amount }}",
                "text": "Hi {{ name }}, we received {{ amount }}.",
                "html": "<p>Hi {{ name }}, we received <b>{{ amount }}</b>.</p>",
            },
            "sms": {"body": "Hi {{ name }}, {{ amount }} received."},
        },
        "de": {
            "email": {
                "subject": "Beleg über {{ amount }}",
                "text": "Hallo {{ name }}, wir haben {{ amount }} erhalten.",
                "html": "<p>Hallo {{ name }}, wir haben <b>{{ amount }}</b> erhalten.</p>",
            },
            "sms": {"body": "Hallo {{ name }}, {{ amount }} erhalten."},
        },
    },
}


def received_email(fleet: FakeFleet, provider: str) -> list[EmailMessage]:
    """The MIME messages an SMTP or SES fake accepted."""
    if provider == "smtp":
        assert fleet.smtp is not None
        return [mail.message for mail in fleet.smtp.received]
    assert fleet.ses is not None
    return fleet.ses.received_mime()


def text_and_html(mail: EmailMessage) -> tuple[str, str]:
    assert mail.get_content_type() == "multipart/alternative"
    text = mail.get_body(("plain",))
    html = mail.get_body(("html",))
    assert text is not None
    assert html is not None
    return str(text.get_content()), str(html.get_content())  # type: ignore[attr-defined]


@pytest.mark.parametrize("provider", ["smtp", "ses", "sendgrid"])
async def test_templated_email_and_sms(
    provider: str, fleet: FakeFleet, launch_herald: HeraldLauncher
) -> None:
    if provider == "smtp" and fleet.smtp is None:
        pytest.skip("aiosmtpd is not installed")
    if provider == "ses":
        if fleet.ses is None:
            pytest.skip("moto[server] is not installed")
        await fleet.ses.verify_identity(SENDER_ADDRESS)  # SES sends only from verified ones
    herald = await launch(launch_herald, fleet.env_for(email_providers=(provider,)))

    async with api_client(herald) as api:
        await ok(api.put("/v1/templates/receipt", json=RECEIPT_TEMPLATE))
        await ok(
            api.put(
                "/v1/users/jonas",
                json={"email": "jonas@example.com", "phone": "+4915123456789", "locale": "de"},
            )
        )
        variables = {"name": "Jonas", "amount": "12,00 €"}
        billing = await notify(
            api,
            user_id="jonas",
            category="billing",
            template="receipt",
            variables=variables,
            channels=["email", "sms"],
        )
        deliveries = await settled(api, billing, expected=2)
        critical = await notify(
            api,
            user_id="jonas",
            category="security",
            priority="critical",
            template="receipt",
            variables=variables,
            channels=["email"],
        )
        [critical_delivery] = (await settled(api, critical, expected=1)).values()

    email_delivery = next(d for d in deliveries.values() if d["provider"] == provider)
    sms_delivery = next(d for d in deliveries.values() if d["provider"] == "twilio")
    assert email_delivery["status"] == sms_delivery["status"] == "sent"
    assert critical_delivery["status"] == "sent"

    if provider == "sendgrid":
        first, second = fleet.sendgrid.received
        body = first.body
        assert first.recipients == ["jonas@example.com"]
        assert body["subject"] == "Beleg über 12,00 €"
        text_part, html_part = body["content"]
        assert text_part["value"] == "Hallo Jonas, wir haben 12,00 € erhalten."
        assert html_part["type"] == "text/html"
        html = html_part["value"]
        assert first.custom_args == {"herald_delivery_id": email_delivery["id"]}
        assert email_delivery["provider_message_id"] == first.message_id
        headers = body["headers"]
        assert headers["Message-ID"] == f"<{email_delivery['id']}@herald>"
        unsubscribe = headers["List-Unsubscribe"]
        assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert "List-Unsubscribe" not in second.body["headers"]  # critical: no opt-out link
    else:
        first_mime, second_mime = received_email(fleet, provider)
        assert first_mime["To"] == "jonas@example.com"
        assert first_mime["Subject"] == "Beleg über 12,00 €"
        text, html = text_and_html(first_mime)
        assert text.strip() == "Hallo Jonas, wir haben 12,00 € erhalten."

        assert first_mime["Message-ID"] == f"<{email_delivery['id']}@herald>"
        unsubscribe = str(first_mime["List-Unsubscribe"])
        assert first_mime["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert second_mime["List-Unsubscribe"] is None  # critical: no opt-out link
        if provider == "smtp":
            assert email_delivery["provider_message_id"] == f"<{email_delivery['id']}@herald>"
        else:
            assert fleet.ses is not None
            assert email_delivery["provider_message_id"] == fleet.ses.received[0].id
    assert unsubscribe.startswith(f"<{herald.url}/v1/unsubscribe?token=")
    # The template's html fragment inside the deployment's layout, with the footer's link.
    assert html.startswith("<!DOCTYPE html>")
    assert "<p>Hallo Jonas, wir haben <b>12,00 €</b> erhalten.</p>" in html
    assert f'href="{escape(unsubscribe.strip("<>"))}"' in html

    [sms] = fleet.twilio.received
    assert sms.to == "+4915123456789"
    assert sms.body == "Hallo Jonas, 12,00 € erhalten."
    assert sms.status_callback == f"{herald.url}/v1/webhooks/twilio"
    assert sms_delivery["provider_message_id"] == sms.sid


# --------------------------------------------------------------------------- webhooks


async def test_webhooks_close_the_loop(fleet: FakeFleet, launch_herald: HeraldLauncher) -> None:
    port = free_tcp_port()
    public_url = f"http://localhost:{port}"  # not Herald's default form: the setting counts
    herald = await launch(
        launch_herald,
        fleet.env_for(email_providers=("sendgrid",), public_url=public_url),
        port=port,
    )
    twilio_hook = f"{public_url}/v1/webhooks/twilio"
    sendgrid_hook = f"{public_url}/v1/webhooks/sendgrid"

    async with api_client(herald) as api, httpx.AsyncClient(timeout=10) as outside:
        await ok(
            api.put("/v1/users/bob", json={"email": "bob@example.com", "phone": "+14155550123"})
        )

        # Twilio: a signed "delivered" status callback marks the SMS delivered.
        sms_notification = await notify(
            api, user_id="bob", category="alerts", body="Door opened", channels=["sms"]
        )
        [sms_delivery] = (await settled(api, sms_notification, expected=1)).values()
        assert sms_delivery["status"] == "sent"
        [sms] = fleet.twilio.received
        assert sms.status_callback == twilio_hook
        forged_form = {"MessageSid": sms.sid, "MessageStatus": "delivered", "To": sms.to}
        forged = await outside.post(
            twilio_hook,
            data=forged_form,
            headers={
                "X-Twilio-Signature": twilio_signature("wrong", twilio_hook, forged_form.items())
            },
        )
        assert forged.status_code == 401
        assert await fleet.twilio.send_status_callback(sms.sid, "delivered") == 200
        [sms_delivery] = (
            await settled(api, sms_notification, 1, lambda d: d["status"] == "delivered")
        ).values()
        assert sms_delivery["provider_message_id"] == sms.sid

        # SendGrid: a forged bounce changes nothing; a signed one suppresses the address.
        first = await notify(
            api, user_id="bob", category="news", title="Hi", body="News", channels=["email"]
        )
        [email_delivery] = (await settled(api, first, expected=1)).values()
        assert email_delivery["status"] == "sent"
        [mail] = fleet.sendgrid.received
        bounce = fleet.sendgrid.event(
            mail, "bounce", type="bounce", status="5.1.1", reason="550 5.1.1 user unknown"
        )
        body, headers = fleet.sendgrid.signed_events([bounce])
        tampered = body.replace(b"bob@example.com", b"eve@example.com")
        assert (
            await outside.post(sendgrid_hook, content=tampered, headers=headers)
        ).status_code == 401
        bad_signature = {**headers, SENDGRID_SIGNATURE_HEADER: base64.b64encode(b"x" * 70).decode()}
        assert (
            await outside.post(sendgrid_hook, content=body, headers=bad_signature)
        ).status_code == 401
        assert (await ok(api.get(f"/v1/notifications/{first}")))["deliveries"][0][
            "status"
        ] == "sent"
        assert (await ok(api.get("/v1/suppressions", params={"channel": "email"})))["items"] == []

        assert await fleet.sendgrid.post_events(sendgrid_hook, [bounce]) == 200
        [email_delivery] = (
            await settled(api, first, 1, lambda d: d["status"] == "undeliverable")
        ).values()
        suppressions = (await ok(api.get("/v1/suppressions", params={"channel": "email"})))["items"]
        assert [(s["address"], s["reason"]) for s in suppressions] == [
            ("bob@example.com", "sendgrid bounced")
        ]

        # The next email to the address is not sent at all.
        second = await notify(
            api, user_id="bob", category="news", title="Again", body="News", channels=["email"]
        )
        [skipped] = (await settled(api, second, expected=1)).values()
        assert skipped["status"] == "skipped"
        assert skipped["last_error"] == "address is suppressed"
        assert len(fleet.sendgrid.received) == 1


# --------------------------------------------------------------------------- failover


async def sending_paused_ses() -> tuple[web.AppRunner, str, list[str]]:
    """An SES endpoint whose account has sending paused: every SendEmail is refused with
    SendingPausedException (provider_down per docs/providers.md)."""
    calls: list[str] = []

    async def refuse(request: web.Request) -> web.Response:
        calls.append(request.path)
        return web.json_response(
            {"message": "Sending is paused for this account."},
            status=400,
            headers={"x-amzn-ErrorType": "SendingPausedException"},
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_tcp_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}", calls


@pytest.mark.parametrize(
    "ses_fault",
    # Either fault opens SES's circuit, which is logged as an error.
    [
        pytest.param("unreachable", marks=pytest.mark.expect_errors),
        pytest.param("sending_paused", marks=pytest.mark.expect_errors),
    ],
)
async def test_email_fails_over_from_ses_to_sendgrid(
    ses_fault: str, fleet: FakeFleet, launch_herald: HeraldLauncher
) -> None:
    stub: web.AppRunner | None = None
    ses_calls: list[str] = []
    if ses_fault == "unreachable":
        ses_url = f"http://127.0.0.1:{free_tcp_port()}"  # nothing listens: SES is down
    else:
        stub, ses_url, ses_calls = await sending_paused_ses()
    env = fleet.env_for(
        email_providers=("ses", "sendgrid"),
        overrides={
            "HERALD_SES_ENDPOINT_URL": ses_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "HERALD_MAX_ATTEMPTS": "2",
            "HERALD_RETRY_BASE_SECONDS": "0.2",
        },
    )
    try:
        herald = await launch(launch_herald, env)
        async with api_client(herald) as api:
            await ok(api.put("/v1/users/carol", json={"email": "carol@example.com"}))
            notification_id = await notify(
                api,
                user_id="carol",
                category="billing",
                title="Paid",
                body="Thanks",
                channels=["email"],
            )
            [delivery] = (await settled(api, notification_id, expected=1)).values()
            await asyncio.sleep(1.0)  # room for a duplicate to show up, if there were one
            [delivery] = (await ok(api.get(f"/v1/notifications/{notification_id}")))["deliveries"]
            log = [
                e for e in await events(api, notification_id) if e["delivery_id"] == delivery["id"]
            ]
    finally:
        if stub is not None:
            await stub.cleanup()

    # SendGrid took it, once, under the same delivery id; SES accepted nothing.
    assert delivery["status"] == "sent"
    assert delivery["provider"] == "sendgrid"
    [mail] = fleet.sendgrid.received
    assert mail.custom_args == {"herald_delivery_id": delivery["id"]}
    assert delivery["provider_message_id"] == mail.message_id
    assert fleet.ses is None or fleet.ses.received == []

    # The log shows the SES attempt and the SendGrid one, for the one delivery.
    [final] = [e for e in log if e["status"] == "sent"]
    assert final["provider"] == "sendgrid"
    [failed_over] = final["detail"]["failed_over_from"]
    # Either way SES is down, and SendGrid sends in the same attempt: nothing is deferred.
    assert [e for e in log if e["status"] == "deferred"] == []
    assert delivery["attempts"] == 1
    if ses_fault == "unreachable":
        assert failed_over.startswith("ses: provider down: ses unreachable")
    else:
        assert failed_over.startswith("ses: provider down: ses 400 SendingPausedException")
        assert ses_calls == ["/v2/email/outbound-emails"]


# --------------------------------------------------------------------------- the command


def test_herald_fakes_command_prints_exports_and_stops_on_sigterm(tmp_path: Path) -> None:
    directory = tmp_path / "fakes"
    process = subprocess.Popen(
        [serve_fixture.HERALD, "fakes", "--dir", str(directory), "--herald-url", "http://h:1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # stray SIGINTs for the test runner do not reach it
    )
    try:
        deadline = time.monotonic() + 60
        while not (directory / "env.sh").exists() and process.poll() is None:
            assert time.monotonic() < deadline, "herald fakes wrote no env.sh"
            time.sleep(0.1)
        time.sleep(0.5)  # the exports are printed right after env.sh is written
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)

    assert process.returncode == 0, stderr.decode()
    exports = stdout.decode()
    assert exports == (directory / "env.sh").read_text()
    env = dict(
        shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in exports.splitlines()
    )
    assert env["HERALD_PUBLIC_URL"] == "http://h:1"
    assert env["HERALD_EMAIL_PROVIDERS"] == "smtp"
    assert env["HERALD_SMS_PROVIDERS"] == "twilio"
    assert env["HERALD_APNS_BASE_URL"].startswith("https://127.0.0.1:")
    for variable in ("HERALD_CA_FILE", "HERALD_FCM_CREDENTIALS", "HERALD_APNS_KEY_FILE"):
        assert Path(env[variable]).is_file()
    service_account = orjson.loads(Path(env["HERALD_FCM_CREDENTIALS"]).read_bytes())
    assert service_account["token_uri"] == env["HERALD_FCM_BASE_URL"] + "/token"
    assert b"fakes stopped" in stderr


# --------------------------------------------------------------------------- chat, webhook


async def test_a_new_user_reaches_slack_webhook_and_whatsapp_through_herald_serve(
    fleet: FakeFleet, launch_herald: HeraldLauncher
) -> None:
    """What a newcomer does with `herald fakes` and `herald serve`: give a user a Slack and
    a webhook address (and WhatsApp), notify, see each fake receive it."""
    herald = await launch(launch_herald, fleet.env)
    hook_url, secret = fleet.webhooks.endpoint()
    channel = fleet.slack.create_channel()
    fleet.twilio.open_whatsapp_session("+14155550100")
    async with api_client(herald) as api:
        await ok(api.put("/v1/users/ada", json={"email": "ada@example.com"}))
        for kind, body in (
            ("slack", {"channel": channel}),
            ("webhook", {"url": hook_url, "secret": secret}),
            ("whatsapp", {"phone": "+14155550100"}),
        ):
            await ok(api.put(f"/v1/users/ada/channels/{kind}", json=body))
        notification_id = await notify(
            api,
            user_id="ada",
            title="Welcome",
            body="Glad you're here",
            channels=["chat", "webhook", "whatsapp", "email"],
        )
        deliveries = await settled(api, notification_id, expected=4)
    assert {d["status"] for d in deliveries.values()} == {"sent"}
    [post] = fleet.slack.received
    assert (post.channel, post.via) == (channel, "api")
    assert post.body["blocks"][0]["text"]["text"] == "Welcome"
    [hook] = fleet.webhooks.received
    assert (
        Webhook(secret).verify(hook.body, hook.headers)["data"]["notification_id"]
        == notification_id
    )
    [whatsapp] = fleet.twilio.received
    assert (whatsapp.to, whatsapp.body) == ("whatsapp:+14155550100", "Glad you're here")
