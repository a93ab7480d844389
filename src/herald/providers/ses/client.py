"""Email through Amazon SES v2 (aiobotocore `sesv2` SendEmail with Content.Raw).

Error codes (x-amzn-ErrorType, which botocore surfaces as Error.Code) per docs/providers.md.
botocore's own retries are off: retrying is the worker's decision.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any, Self

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    ParamValidationError,
)

from herald.clock import SYSTEM_CLOCK, Clock
from herald.config import Settings
from herald.domain.channels import Channel
from herald.domain.outcomes import (
    Accepted,
    InvalidTarget,
    Outcome,
    ProviderDown,
    Rejected,
    Retry,
)
from herald.providers.base import OutboundMessage, Provider
from herald.providers.email_layout import EmailBranding
from herald.providers.email_message import (
    DEFAULT_BRANDING,
    InvalidEmail,
    build_email,
    envelope_address,
    is_plausible_address,
    render,
)

DELIVERY_TAG = "herald_delivery_id"
# SES tag values: ASCII letters, digits, underscore and dash only.
_TAG_VALUE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")

REJECTED_CODES = frozenset({"MessageRejected"})
PROVIDER_DOWN_CODES = frozenset(
    {
        "MailFromDomainNotVerifiedException",
        "NotFoundException",
        "SendingPausedException",
        "AccountSuspendedException",
        # Credentials and signing (not in the SES model; AWS-wide codes).
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "AccessDeniedException",
        "ExpiredTokenException",
        "InvalidClientTokenId",
    }
)
RETRY_CODES = frozenset({"TooManyRequestsException", "LimitExceededException", "Throttling"})


class SesProvider(Provider):
    name = "ses"
    channel = Channel.EMAIL
    batch_size = 50
    # AWS's usual starting quota once out of the sandbox is 14 messages/s (the sandbox
    # allows 1/s); each account's real figure is in GetAccount (unconfirmed per account).
    default_rate_per_s = 14.0

    def __init__(
        self,
        *,
        sender: str,
        region: str,
        endpoint_url: str | None = None,
        concurrency: int = 10,
        ca_file: str | None = None,
        timeout: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
        branding: EmailBranding = DEFAULT_BRANDING,
    ) -> None:
        self._branding = branding
        self._sender = sender
        self._region = region
        self._endpoint_url = endpoint_url
        self._concurrency = concurrency
        self._ca_file = ca_file
        self._timeout = timeout
        self._clock = clock
        self._client: Any = None
        self._stack = AsyncExitStack()
        self._start_lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock = SYSTEM_CLOCK) -> Self | None:
        if "ses" not in settings.email_providers:
            return None
        return cls(
            sender=settings.email_from,
            region=settings.ses_region,
            endpoint_url=settings.ses_endpoint_url,
            # botocore takes one CA bundle in place of its own: only a custom endpoint (a
            # local SES) gets HERALD_CA_FILE, so AWS itself keeps the standard bundle.
            ca_file=str(settings.ca_file)
            if settings.ca_file and settings.ses_endpoint_url
            else None,
            clock=clock,
            branding=EmailBranding.from_settings(settings),
        )

    def describe(self) -> str:
        return f"ses {self._region}" + (f" at {self._endpoint_url}" if self._endpoint_url else "")

    async def start(self) -> None:
        async with self._start_lock:
            if self._client is not None:
                return
            config = AioConfig(
                retries={"total_max_attempts": 1, "mode": "standard"},
                max_pool_connections=self._concurrency,
                connect_timeout=self._timeout,
                read_timeout=self._timeout,
            )
            client_context = get_session().create_client(
                "sesv2",
                region_name=self._region,
                endpoint_url=self._endpoint_url,
                config=config,
                verify=self._ca_file,
            )
            self._client = await self._stack.enter_async_context(client_context)

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None

    async def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
        outcomes: dict[int, Outcome] = {}
        await self.send_each(messages, outcomes.__setitem__)
        return [outcomes[index] for index in range(len(messages))]

    async def send_each(
        self, messages: Sequence[OutboundMessage], report: Callable[[int, Outcome], None]
    ) -> None:
        if self._client is None:
            try:
                await self.start()
            except (BotoCoreError, OSError, ValueError) as exc:  # region, endpoint, CA file
                for index in range(len(messages)):
                    report(index, ProviderDown(f"ses client cannot start: {exc}"))
                return
        limit = asyncio.Semaphore(self._concurrency)

        async def bounded(index: int, message: OutboundMessage) -> None:
            async with limit:
                report(index, await self._send_one(message))

        await asyncio.gather(*(bounded(i, m) for i, m in enumerate(messages)))

    async def _send_one(self, message: OutboundMessage) -> Outcome:
        if not is_plausible_address(message.target):
            return InvalidTarget(f"malformed email address {message.target!r}")
        try:
            raw = render(
                build_email(
                    message, sender=self._sender, now=self._clock.now(), branding=self._branding
                )
            )
        except InvalidEmail as exc:
            return Rejected(f"cannot build message: {exc}")
        request: dict[str, Any] = {
            "FromEmailAddress": envelope_address(self._sender),
            "Destination": {"ToAddresses": [message.target]},
            "Content": {"Raw": {"Data": raw}},
        }
        if _TAG_VALUE.match(message.delivery_id):
            request["EmailTags"] = [{"Name": DELIVERY_TAG, "Value": message.delivery_id}]
        try:
            answer = await self._client.send_email(**request)
        except ClientError as exc:
            return classify_client_error(exc)
        except NoCredentialsError as exc:
            return ProviderDown(f"ses: {exc}")
        except ParamValidationError as exc:  # a request botocore refuses to send: our bug
            return Rejected(f"ses: {exc}")
        except (BotoCoreError, aiohttp.ClientError, ssl.SSLError, OSError, TimeoutError) as exc:
            # No answer (refused, reset, DNS, TLS, timeout: botocore's EndpointConnectionError,
            # ConnectTimeoutError, ReadTimeoutError, SSLError...): SES is down for now, and
            # the next email provider sends at once.
            return ProviderDown(f"ses unreachable: {type(exc).__name__}: {exc}")
        return Accepted(provider_message_id=str(answer["MessageId"]))


def classify_client_error(exc: ClientError) -> Outcome:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    return classify(code, status, str(error.get("Message", "")))


def classify(code: str, status: int, message: str = "") -> Outcome:
    reason = f"ses {status} {code}: {message}".rstrip(": ")
    if code in REJECTED_CODES:
        return Rejected(reason)
    if code in PROVIDER_DOWN_CODES or status in (401, 403):
        return ProviderDown(reason)
    if code in RETRY_CODES or status == 429 or status >= 500:
        return Retry(reason)
    # BadRequestException and anything else 4xx: this request is wrong, not the account.
    return Rejected(reason)
