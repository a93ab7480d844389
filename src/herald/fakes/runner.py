"""Every fake provider at once, on loopback: `herald fakes` for a demo, `FakeFleet` for tests
and benchmarks.

    async with FakeFleet(tmp_dir) as fleet:
        env = fleet.env                  # HERALD_* (and AWS_*) that make `herald serve` use them
        fleet.fcm.received, fleet.apns.received, fleet.webpush.received
        fleet.sendgrid.received, fleet.twilio.received, fleet.smtp.received, fleet.ses.received

The HTTP fakes (FCM with its OAuth token endpoint, APNs over HTTP/2, Web Push, SendGrid,
Twilio) serve TLS with a certificate from a CA generated at start (HERALD_CA_FILE). SMTP is
an aiosmtpd server and SES is moto's server; both are test dependencies, so each runs only
when its package is importable (`fleet.smtp` / `fleet.ses` are None otherwise). Credentials
the providers need (the service-account JSON, the APNs .p8 key, the VAPID key) are written
into the fleet's directory next to `env.sh`.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import logging
import shlex
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Self, TextIO

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from herald.fakes.apns import FakeApns
from herald.fakes.common import b64url_encode
from herald.fakes.discord import FakeDiscord
from herald.fakes.fcm import FakeFcm
from herald.fakes.sendgrid import FakeSendGrid
from herald.fakes.slack import FakeSlack
from herald.fakes.sns import default_topic_arn
from herald.fakes.teams import FakeTeams
from herald.fakes.tls import LocalTls, generate_local_tls
from herald.fakes.twilio import FakeTwilio
from herald.fakes.webhook import FakeWebhookReceiver
from herald.fakes.webpush import FakeWebPush

HOST = "127.0.0.1"
SENDER_ADDRESS = "alerts@herald.example"
SENDER = f"Herald Demo <{SENDER_ADDRESS}>"
TWILIO_FROM = "+15005550006"  # Twilio's test-credential "valid From" number
WHATSAPP_FROM = "+14155238886"  # Twilio's WhatsApp sandbox number
WHATSAPP_TEMPLATE = "HX" + "0" * 32
APNS_TOPIC = "com.example.herald"
APNS_TEAM_ID = "TEAM123456"
SES_REGION = "us-east-1"
AWS_TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_EC2_METADATA_DISABLED": "true",
}
MOTO_ACCOUNT_ID = "123456789012"  # moto's account for any test credentials


def free_tcp_port(host: str = HOST) -> int:
    """A port free right now (aiosmtpd 1.4.6 cannot bind port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------- SMTP


@dataclass(frozen=True, slots=True)
class SmtpReceived:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    message: EmailMessage


@dataclass
class _SmtpHandler:
    received: list[SmtpReceived]

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode()
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.received.append(
            SmtpReceived(str(envelope.mail_from), list(envelope.rcpt_tos), raw, parsed)
        )
        return "250 Message accepted for delivery"


class SmtpSink:
    """An aiosmtpd server (its own thread and loop) that keeps every message it accepts."""

    def __init__(self, host: str = HOST) -> None:
        self.host = host
        self.port = 0
        self.received: list[SmtpReceived] = []
        self._controller: Any = None

    def start(self) -> None:
        from aiosmtpd.controller import Controller

        self.port = free_tcp_port(self.host)
        self._controller = Controller(
            _SmtpHandler(self.received), hostname=self.host, port=self.port
        )
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


# --------------------------------------------------------------------------- SES (moto)


class MotoSes:
    """moto's server (SES v2 and the rest of AWS) in a thread of this process.

    moto keeps its state per process, so `received` lists what was sent since this server
    started, read from moto's SES backend in this process."""

    def __init__(self, host: str = HOST, region: str = SES_REGION) -> None:
        self.host = host
        self.region = region
        self.port = 0
        self._server: Any = None
        self._first_message = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address=self.host, port=0, verbose=False)
        self._server.start()
        self.port = int(self._server.get_host_and_port()[1])
        self._first_message = len(self._backend().sent_messages)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def _backend(self) -> Any:
        from moto.ses.models import ses_backends

        return ses_backends[MOTO_ACCOUNT_ID][self.region]

    @property
    def received(self) -> list[Any]:
        """moto RawMessage objects (`id`, `source`, `destinations`, `raw_data`)."""
        return list(self._backend().sent_messages[self._first_message :])

    def received_mime(self) -> list[EmailMessage]:
        parsed = []
        for raw in self.received:
            message = email.message_from_string(raw.raw_data, policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            parsed.append(message)
        return parsed

    async def verify_identity(self, identity: str) -> None:
        """SES refuses to send from an unverified identity: verify it (as the console's
        "Create identity" does) through the real SES v2 API."""
        from aiobotocore.session import get_session
        from botocore.exceptions import ClientError

        client_context = get_session().create_client(
            "sesv2",
            region_name=self.region,
            endpoint_url=self.url,
            aws_access_key_id=AWS_TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )
        async with client_context as client:
            try:
                await client.create_email_identity(EmailIdentity=identity)
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") != "AlreadyExistsException":
                    raise


# --------------------------------------------------------------------------- the fleet


@dataclass(frozen=True, slots=True)
class FleetFiles:
    ca_file: Path
    fcm_credentials: Path
    apns_key_file: Path
    vapid_key_file: Path
    web_device: Path
    env_file: Path


@dataclass
class FakeFleet:
    """Starts every fake on loopback and knows the environment that points Herald at them.

    `public_url` is where the fakes reach Herald (Twilio status callbacks): it becomes
    HERALD_PUBLIC_URL when given. `email_providers`/`sms_providers` set the failover lists
    in `env`; `env_for(...)` gives variants (one provider per launch, failover pairs)."""

    directory: Path
    public_url: str | None = None
    email_providers: tuple[str, ...] = ("smtp",)
    sms_providers: tuple[str, ...] = ("twilio",)
    twilio_auto_callbacks: bool = False
    with_smtp: bool | None = None  # None: when aiosmtpd is importable
    with_ses: bool | None = None  # None: when moto is importable
    verify_ses_sender: bool = True
    host: str = HOST

    tls: LocalTls = field(init=False)
    fcm: FakeFcm = field(init=False)
    apns: FakeApns = field(init=False)
    webpush: FakeWebPush = field(init=False)
    sendgrid: FakeSendGrid = field(init=False)
    twilio: FakeTwilio = field(init=False)
    webhooks: FakeWebhookReceiver = field(init=False)
    slack: FakeSlack = field(init=False)
    teams: FakeTeams = field(init=False)
    discord: FakeDiscord = field(init=False)
    smtp: SmtpSink | None = field(init=False, default=None)
    ses: MotoSes | None = field(init=False, default=None)
    files: FleetFiles = field(init=False)
    apns_key_id: str = field(init=False, default="")
    vapid_public_key: str = field(init=False, default="")
    _started: list[Any] = field(init=False, default_factory=list)

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.tls = generate_local_tls(self.directory / "tls", (self.host, "localhost"))
        options: dict[str, Any] = {"tls": self.tls, "host": self.host}
        self.fcm = FakeFcm(**options)
        self.apns = FakeApns(topics=frozenset({APNS_TOPIC}), **options)
        self.webpush = FakeWebPush(**options)
        self.sendgrid = FakeSendGrid(**options)
        self.twilio = FakeTwilio(
            sender_numbers=frozenset({TWILIO_FROM}),
            auto_callbacks=self.twilio_auto_callbacks,
            **options,
        )
        self.twilio.sender_numbers = frozenset({TWILIO_FROM, "whatsapp:" + WHATSAPP_FROM})
        self.webhooks = FakeWebhookReceiver(**options)
        self.slack = FakeSlack(**options)
        self.teams = FakeTeams(**options)
        self.discord = FakeDiscord(**options)
        try:
            for server in (
                self.fcm,
                self.apns,
                self.webpush,
                self.sendgrid,
                self.twilio,
                self.webhooks,
                self.slack,
                self.teams,
                self.discord,
            ):
                await server.start()
                self._started.append(server)
            if _wanted(self.with_smtp, "aiosmtpd"):
                self.smtp = SmtpSink(self.host)
                await asyncio.to_thread(self.smtp.start)
                self._started.append(self.smtp)
            if _wanted(self.with_ses, "moto"):
                self.ses = MotoSes(self.host)
                await asyncio.to_thread(self.ses.start)
                self._started.append(self.ses)
                if self.verify_ses_sender:
                    await self.ses.verify_identity(SENDER_ADDRESS)
            self.files = self._write_credentials()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop everything at once (each HTTP fake waits for its connections to drain)."""

        async def stop_one(server: Any) -> None:
            if isinstance(server, SmtpSink | MotoSes):
                await asyncio.to_thread(server.stop)
            else:
                await server.stop()

        started, self._started = self._started, []
        await asyncio.gather(*(stop_one(server) for server in started), return_exceptions=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- credentials and environment ----------------------------------------------------

    def _write_credentials(self) -> FleetFiles:
        fcm_credentials = self.directory / "fcm-service-account.json"
        fcm_credentials.write_bytes(
            orjson.dumps(self.fcm.create_service_account(), option=orjson.OPT_INDENT_2)
        )
        fcm_credentials.chmod(0o600)
        self.apns_key_id, apns_pem = self.apns.create_signing_key(APNS_TEAM_ID)
        apns_key_file = self.directory / f"AuthKey_{self.apns_key_id}.p8"
        apns_key_file.write_bytes(apns_pem)
        apns_key_file.chmod(0o600)
        vapid_key = ec.generate_private_key(ec.SECP256R1())
        self.vapid_public_key = b64url_encode(
            vapid_key.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
        )
        vapid_key_file = self.directory / "vapid-private-key.pem"
        vapid_key_file.write_bytes(
            vapid_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        vapid_key_file.chmod(0o600)
        web_device = self.directory / "web-device.json"
        web_device.write_bytes(
            orjson.dumps(
                {"platform": "web", "subscription": self.web_subscription()},
                option=orjson.OPT_INDENT_2,
            )
        )
        files = FleetFiles(
            ca_file=self.tls.ca_file,
            fcm_credentials=fcm_credentials,
            apns_key_file=apns_key_file,
            vapid_key_file=vapid_key_file,
            web_device=web_device,
            env_file=self.directory / "env.sh",
        )
        self.files = files
        files.env_file.write_text(self.exports())
        return files

    def web_subscription(self) -> dict[str, Any]:
        """A new browser subscription on the Web Push fake, bound to the fleet's VAPID key
        (as `pushManager.subscribe({applicationServerKey})` makes it)."""
        return self.webpush.subscribe(application_server_key=self.vapid_public_key)

    @property
    def env(self) -> dict[str, str]:
        return self.env_for()

    def env_for(
        self,
        *,
        email_providers: tuple[str, ...] | None = None,
        sms_providers: tuple[str, ...] | None = None,
        public_url: str | None = None,
        overrides: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """The variables that make `herald serve` use these fakes."""
        emails = self.email_providers if email_providers is None else email_providers
        sms = self.sms_providers if sms_providers is None else sms_providers
        env = {
            # The fakes listen on 127.0.0.1, which Web Push endpoints may not name otherwise.
            "HERALD_ALLOW_PRIVATE_TARGETS": "1",
            "HERALD_CA_FILE": str(self.files.ca_file),
            "HERALD_FCM_CREDENTIALS": str(self.files.fcm_credentials),
            "HERALD_FCM_BASE_URL": self.fcm.base_url,
            "HERALD_APNS_KEY_FILE": str(self.files.apns_key_file),
            "HERALD_APNS_KEY_ID": self.apns_key_id,
            "HERALD_APNS_TEAM_ID": APNS_TEAM_ID,
            "HERALD_APNS_TOPIC": APNS_TOPIC,
            "HERALD_APNS_BASE_URL": self.apns.base_url,
            "HERALD_VAPID_PRIVATE_KEY": str(self.files.vapid_key_file),
            "HERALD_VAPID_SUBJECT": "mailto:ops@herald.example",
            "HERALD_EMAIL_FROM": SENDER,
            "HERALD_SENDGRID_API_KEY": self.sendgrid.api_key,
            "HERALD_SENDGRID_BASE_URL": self.sendgrid.base_url,
            "HERALD_SENDGRID_WEBHOOK_KEY": self.sendgrid.public_key_base64,
            "HERALD_TWILIO_ACCOUNT_SID": self.twilio.account_sid,
            "HERALD_TWILIO_AUTH_TOKEN": self.twilio.auth_token,
            "HERALD_TWILIO_FROM": TWILIO_FROM,
            "HERALD_TWILIO_BASE_URL": self.twilio.base_url,
            "HERALD_TWILIO_WHATSAPP_FROM": WHATSAPP_FROM,
            # Any HX... SID is an approved template to the fake (outside the 24-hour window).
            "HERALD_TWILIO_WHATSAPP_CONTENT_SID": WHATSAPP_TEMPLATE,
            "HERALD_SLACK_BOT_TOKEN": self.slack.bot_token,
            "HERALD_SLACK_BASE_URL": self.slack.base_url,
            # SES events reach Herald through SNS; FakeSns publishes on this topic.
            "HERALD_SNS_TOPIC_ARNS": default_topic_arn(),
            "HERALD_EMAIL_PROVIDERS": ",".join(emails),
            "HERALD_SMS_PROVIDERS": ",".join(sms),
        }
        if self.smtp is not None:
            env |= {
                "HERALD_SMTP_HOST": self.smtp.host,
                "HERALD_SMTP_PORT": str(self.smtp.port),
                "HERALD_SMTP_STARTTLS": "false",
            }
        if self.ses is not None:
            env |= {
                "HERALD_SES_REGION": self.ses.region,
                "HERALD_SES_ENDPOINT_URL": self.ses.url,
                **AWS_TEST_CREDENTIALS,
            }
        url = public_url or self.public_url
        if url:
            env["HERALD_PUBLIC_URL"] = url
        return env | dict(overrides or {})

    def exports(self, env: Mapping[str, str] | None = None) -> str:
        lines = [f"export {k}={shlex.quote(v)}" for k, v in (env or self.env).items()]
        return "\n".join(lines) + "\n"

    def describe(self) -> list[str]:
        lines = [
            f"fcm       {self.fcm.base_url} (token endpoint {self.fcm.token_uri})",
            f"apns      {self.apns.base_url} (HTTP/2, topic {APNS_TOPIC})",
            f"webpush   {self.webpush.base_url} (a subscription: {self.files.web_device})",
            f"sendgrid  {self.sendgrid.base_url}",
            f"twilio    {self.twilio.base_url} (from {TWILIO_FROM}, whatsapp {WHATSAPP_FROM})",
            f"webhook   {self.webhooks.base_url} (fleet.webhooks.endpoint() makes one)",
            f"slack     {self.slack.base_url} (chat.postMessage, incoming webhooks)",
            f"teams     {self.teams.base_url} (incoming webhooks, Workflows)",
            f"discord   {self.discord.base_url} (webhooks)",
        ]
        lines.append(
            f"smtp      {self.smtp.host}:{self.smtp.port}"
            if self.smtp
            else "smtp      off (aiosmtpd is not installed)"
        )
        lines.append(
            f"ses       {self.ses.url} (moto; {SENDER_ADDRESS} verified)"
            if self.ses
            else "ses       off (moto[server] is not installed)"
        )
        return lines

    def demo_addresses(self) -> list[str]:
        """A ready address on each chat and webhook fake, to PUT on a user."""
        url, secret = self.webhooks.endpoint()
        return [
            "addresses for PUT /v1/users/{id}/channels/{kind}:",
            f'  webhook  {{"url": "{url}", "secret": "{secret}"}}',
            f'  slack    {{"url": "{self.slack.create_webhook()}"}}',
            f'  slack    {{"channel": "{self.slack.create_channel()}"}} (bot token)',
            f'  teams    {{"url": "{self.teams.create_webhook()}"}}',
            f'  discord  {{"url": "{self.discord.create_webhook()}"}}',
            '  whatsapp {"phone": "+14155550100"}',
        ]

    def counts(self) -> dict[str, int]:
        counts = {
            "fcm": len(self.fcm.received),
            "apns": len(self.apns.received),
            "webpush": len(self.webpush.received),
            "sendgrid": len(self.sendgrid.received),
            "twilio": len(self.twilio.received),
            "webhook": len(self.webhooks.received),
            "slack": len(self.slack.received),
            "teams": len(self.teams.received),
            "discord": len(self.discord.received),
        }
        if self.smtp is not None:
            counts["smtp"] = len(self.smtp.received)
        if self.ses is not None:
            counts["ses"] = len(self.ses.received)
        return counts


def _wanted(flag: bool | None, module: str) -> bool:
    if flag is not None:
        return flag
    try:
        __import__(module)
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- the command


def _summaries(fleet: FakeFleet) -> dict[str, Callable[[int], str]]:
    """One line per received message, for the demo's log."""

    def fcm(i: int) -> str:
        message = fleet.fcm.received[i].message
        return f"to {message['token'][:16]}…: {message.get('notification', {})}"

    def apns(i: int) -> str:
        received = fleet.apns.received[i]
        return f"to {received.device_token[:16]}…: {received.payload.get('aps', {})}"

    def webpush(i: int) -> str:
        received = fleet.webpush.received[i]
        return f"to {received.subscription_id}: {received.plaintext.decode(errors='replace')}"

    def sendgrid(i: int) -> str:
        mail = fleet.sendgrid.received[i]
        return f"to {', '.join(mail.recipients)}: {mail.body.get('subject')!r}"

    def twilio(i: int) -> str:
        sms = fleet.twilio.received[i]
        return f"{sms.sid} to {sms.to}: {sms.body!r}"

    def webhook(i: int) -> str:
        received = fleet.webhooks.received[i]
        return f"{received.path} {received.headers.get('webhook-id')}: {received.body[:120]!r}"

    def slack(i: int) -> str:
        post = fleet.slack.received[i]
        return f"{post.channel} ({post.via}): {post.body.get('text')!r}"

    def teams(i: int) -> str:
        post = fleet.teams.received[i]
        texts = [e.get("text") for e in post.card.get("body", []) if e.get("type") == "TextBlock"]
        return f"{post.path[:24]}…: {texts}"

    def discord(i: int) -> str:
        post = fleet.discord.received[i]
        return f"webhook {post.webhook_id}: {post.body.get('embeds') or post.body.get('content')}"

    def smtp(i: int) -> str:
        assert fleet.smtp is not None
        mail = fleet.smtp.received[i]
        return f"to {', '.join(mail.rcpt_tos)}: {mail.message['Subject']!r}"

    def ses(i: int) -> str:
        assert fleet.ses is not None
        raw = fleet.ses.received[i]
        return f"{raw.id} to {', '.join(raw.destinations)}"

    return {
        "fcm": fcm,
        "apns": apns,
        "webpush": webpush,
        "sendgrid": sendgrid,
        "twilio": twilio,
        "webhook": webhook,
        "slack": slack,
        "teams": teams,
        "discord": discord,
        "smtp": smtp,
        "ses": ses,
    }


async def run_fleet(
    directory: Path,
    *,
    herald_url: str,
    email_providers: tuple[str, ...],
    out: TextIO = sys.stdout,
    log: TextIO = sys.stderr,
) -> None:
    """`herald fakes`: start the fleet, print the exports, log what arrives, stop on
    SIGINT/SIGTERM."""
    # The servers' own start-up and request lines would drown the demo's log.
    # (hypercorn resets its logger's level per server, so a filter, which it keeps).
    for noisy in ("hypercorn.error", "werkzeug"):
        logging.getLogger(noisy).addFilter(lambda record: record.levelno >= logging.WARNING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    fleet = FakeFleet(
        directory,
        public_url=herald_url,
        email_providers=email_providers,
        twilio_auto_callbacks=True,
    )
    async with fleet:
        if "ses" in email_providers and fleet.ses is None:
            print("herald fakes: ses needs moto[server]; it is not installed", file=log)
        if "smtp" in email_providers and fleet.smtp is None:
            print("herald fakes: smtp needs aiosmtpd; it is not installed", file=log)
        out.write(fleet.exports())
        out.flush()
        print("\n".join(["", *fleet.describe(), "", *fleet.demo_addresses()]), file=log)
        print(f"\nexports written to {fleet.files.env_file}; Ctrl-C stops the fakes", file=log)
        log.flush()
        summaries = _summaries(fleet)
        seen = dict.fromkeys(fleet.counts(), 0)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            for name, count in fleet.counts().items():
                for i in range(seen[name], count):
                    print(f"{name:9} ← {summaries[name](i)}", file=log)
                seen[name] = count
            log.flush()
    print("fakes stopped", file=log)
