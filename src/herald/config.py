"""Configuration: HERALD_* environment variables, or the same keys in a TOML file
(HERALD_CONFIG_FILE, default ./herald.toml when present). Environment wins over the file."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

MIN_SECRET_LENGTH = 16
HEX_COLOUR = r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})$"
PREFIX = "HERALD_"
# HERALD_* variables that are not settings: the config file's name, and those read by
# scripts/services.sh, scripts/test and the test suite.
OTHER_VARIABLES = frozenset(
    {
        "HERALD_CONFIG_FILE",
        "HERALD_CACHE_DIR",
        "HERALD_SERVICES_SCRIPT",
        "HERALD_PG_CLUSTER",
        "HERALD_PG_PORT",
        "HERALD_KAFKA_PORT",
        "HERALD_KAFKA_CONTROLLER_PORT",
        "HERALD_KAFKA_DATA",
        "HERALD_KAFKA_JAVA_OPTS",
        "HERALD_KAFKA_VERSION",
        "HERALD_KAFKA_START_TIMEOUT",
        "HERALD_TEST_RUN",
        "HERALD_TEST_WORKERS",
        "HERALD_PROPERTY_EXAMPLES",
        "HERALD_FUZZ_EXAMPLES",
        "HERALD_FUZZ_RANDOM",
        "HERALD_CHAOS_TEST_DURATION",
    }
)


class ConfigurationError(ValueError):
    """The configuration cannot work; the message is one line naming the setting."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HERALD_", extra="ignore")

    data_dir: Path = Path(".herald")
    database_url: str | None = None
    kafka_bootstrap: str | None = None
    kafka_partitions: int = 12
    kafka_topic_prefix: str = ""
    # How often a consumer commits the offsets of what it handled (docs/operations.md,
    # "Consumer offsets"); librdkafka takes 1 ms to 24 h.
    kafka_commit_interval_ms: int = Field(default=500, ge=1, le=86_400_000)
    api_key: str | None = None
    public_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    # The secret that signs inbox and unsubscribe tokens. From HERALD_TOKEN_SECRET or the
    # file HERALD_TOKEN_SECRET_FILE (HERALD_SECRET_KEY is the older name); when none is
    # given, one is generated once and kept in the database.
    secret_key: str | None = None
    token_secret: str | None = None
    token_secret_file: Path | None = None
    log_level: str = "INFO"
    log_format: str = "auto"  # auto (JSON unless a terminal), json, console
    # /metrics, /healthz, /readyz of a role process on a port of its own (unset: none; the
    # API serves them on its own port either way).
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"

    # Delivery behaviour
    lease_seconds: float = 30.0
    max_attempts: int = 8
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 3600.0
    circuit_cooldown_seconds: float = 30.0
    sweep_stale_after_seconds: float = 300.0
    events_retention_days: int = 30
    worker_concurrency: int = 200
    # How long the relay waits after a wake-up from idle before its pass, so the rows of
    # several requests go in one pass (0: no wait). docs/operations.md, "The relay".
    relay_linger_ms: float = Field(default=3.0, ge=0, le=1000)
    # How PostgreSQL plans this process's statements (docs/operations.md, "Query plans"):
    # auto is "generic" for a process that runs only relay, router and worker roles, and
    # "per_execution" for every other (the API, the scheduler, `herald serve`, the tools).
    postgres_plans: Literal["auto", "per_execution", "generic"] = "auto"
    rate_limits: dict[str, float] = Field(default_factory=dict)  # provider name -> msg/s
    # Per API key and API process, so one caller cannot starve the rest (0: no limit).
    api_requests_per_s: float = 1000.0
    api_notifications_per_s: float = 20000.0
    api_max_in_flight: int = 512  # per API process; beyond it, 503 + Retry-After
    # How long an idle client connection stays open. Longer than the idle timeout of the
    # pooled clients and load balancers in front (httpx 5 s, AWS ALB 60 s): a server that
    # closes first races the client's next request on that connection, which then fails
    # with a connection reset (a 502 at the balancer).
    http_keepalive_seconds: int = Field(default=75, gt=0)

    # Providers
    ca_file: Path | None = None
    # Failover order. Unset: every provider whose credentials are given (email: smtp, then
    # sendgrid; sms: twilio), as push does; "sandbox" (or an empty value) says sandbox.
    email_providers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    sms_providers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Refuse to start a worker when any channel would go to the sandbox provider.
    refuse_sandbox: bool = False

    fcm_credentials: Path | None = None
    fcm_base_url: str = "https://fcm.googleapis.com"

    apns_key_file: Path | None = None
    apns_key_id: str | None = None
    apns_team_id: str | None = None
    apns_topic: str | None = None
    apns_base_url: str = "https://api.push.apple.com"

    vapid_private_key: str | None = None
    vapid_subject: str | None = None
    # Web Push endpoints are chosen by whoever registers a device: only public https hosts,
    # and when set only these (exact names or "*.suffix"; see providers/targets.py for the
    # known push services). HERALD_ALLOW_PRIVATE_TARGETS=1 lets loopback/private addresses
    # through, for tests and demos against local fakes only.
    webpush_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    allow_private_targets: bool = False

    email_from: str = "Herald <herald@localhost>"
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = True
    smtp_tls: bool = False

    ses_region: str = "us-east-1"
    ses_endpoint_url: str | None = None

    sendgrid_api_key: str | None = None
    sendgrid_base_url: str = "https://api.sendgrid.com"
    sendgrid_webhook_key: str | None = None

    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = None
    twilio_from: str | None = None
    twilio_base_url: str = "https://api.twilio.com"

    # Chat: Slack's bot token for addresses that name a channel id (incoming-webhook URLs
    # need none); the base URL points tests at the fake.
    slack_bot_token: str | None = None
    slack_base_url: str = "https://slack.com"
    # WhatsApp through Twilio's Messages API (the account above): the sender (an E.164
    # number enabled for WhatsApp) and the approved Content template (HX...) sent when a
    # free-form message is refused outside the 24-hour window; its {{1}} is the text.
    twilio_whatsapp_from: str | None = None
    twilio_whatsapp_content_sid: str | None = None

    # HTML email: the default layout's branding.
    email_brand_name: str = Field(default="Herald", min_length=1, max_length=100)
    email_brand_logo_url: str | None = Field(default=None, pattern=r"^https://\S+$")
    email_brand_color: str = Field(default="#1a56db", pattern=HEX_COLOUR)
    email_brand_background: str = Field(default="#f4f5f7", pattern=HEX_COLOUR)

    # SES events through SNS: the topics this deployment subscribed. Required to take SNS
    # webhooks at all (anyone can publish validly signed messages on a topic of their own).
    sns_topic_arns: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator(
        "email_providers", "sms_providers", "webpush_allowed_hosts", "sns_topic_arns", mode="before"
    )
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("database_url")
    @classmethod
    def _database_scheme(cls, value: str | None) -> str | None:
        if value and not value.startswith(("sqlite", "postgres")):  # what open_storage takes
            scheme = value.split(":", 1)[0]
            raise ValueError(f"unsupported scheme {scheme!r}: use sqlite:/// or postgresql://")
        return value

    @model_validator(mode="after")
    def _token_secret(self) -> Self:
        given = [
            name
            for name, value in (
                ("HERALD_TOKEN_SECRET", self.token_secret),
                ("HERALD_TOKEN_SECRET_FILE", self.token_secret_file),
                ("HERALD_SECRET_KEY", self.secret_key),
            )
            if value
        ]
        if len(given) > 1:
            raise ValueError(f"set only one of {' and '.join(given)}")
        if self.token_secret_file is not None:
            try:
                secret = self.token_secret_file.read_text().strip()
            except OSError as error:
                raise ValueError(
                    f"HERALD_TOKEN_SECRET_FILE {self.token_secret_file}: {error.strerror}"
                ) from None
            if not secret:
                raise ValueError(f"HERALD_TOKEN_SECRET_FILE {self.token_secret_file} is empty")
            self.secret_key = secret
        elif self.token_secret:
            self.secret_key = self.token_secret
        if self.secret_key is not None and len(self.secret_key) < MIN_SECRET_LENGTH:
            raise ValueError(f"the token secret must be at least {MIN_SECRET_LENGTH} characters")
        return self

    @model_validator(mode="after")
    def _providers_from_credentials(self) -> Self:
        """Email and SMS providers whose credentials are given serve their channel when no
        list names them (they were ignored, and the channel went to the sandbox)."""
        if "email_providers" not in self.model_fields_set:
            self.email_providers = [
                name
                for name, configured in (
                    ("smtp", bool(self.smtp_host)),
                    ("sendgrid", bool(self.sendgrid_api_key)),
                )
                if configured
            ]
        if "sms_providers" not in self.model_fields_set and self._twilio_complete:
            self.sms_providers = ["twilio"]
        return self

    @property
    def _twilio_complete(self) -> bool:
        return bool(self.twilio_account_sid and self.twilio_auth_token and self.twilio_from)

    def startup_warnings(self, environ: Mapping[str, str] | None = None) -> list[str]:
        """What a start should say about the configuration without refusing it: unknown
        HERALD_* variables (a typo is otherwise silently ignored), incomplete credentials."""
        environ = os.environ if environ is None else environ
        known = {PREFIX + name.upper() for name in type(self).model_fields} | OTHER_VARIABLES
        unknown = sorted(n for n in environ if n.upper().startswith(PREFIX) and n not in known)
        warnings = []
        if unknown:
            described = []
            for name in unknown:
                # Compared without the prefix every name shares, which would make any two
                # names look alike.
                close = difflib.get_close_matches(
                    name.upper().removeprefix(PREFIX),
                    sorted(k.removeprefix(PREFIX) for k in known),
                    n=1,
                    cutoff=0.8,
                )
                described.append(f"{name} (did you mean {PREFIX}{close[0]}?)" if close else name)
            warnings.append("unknown variables, ignored: " + ", ".join(described))
        twilio = {
            "HERALD_TWILIO_ACCOUNT_SID": self.twilio_account_sid,
            "HERALD_TWILIO_AUTH_TOKEN": self.twilio_auth_token,
            "HERALD_TWILIO_FROM": self.twilio_from,
        }
        missing = [name for name, value in twilio.items() if not value]
        if 0 < len(missing) < len(twilio) and "twilio" not in self.sms_providers:
            warnings.append(
                f"Twilio credentials are incomplete ({', '.join(missing)} not set): "
                "SMS does not use Twilio"
            )
        return warnings

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = Path(os.environ.get("HERALD_CONFIG_FILE", "herald.toml"))
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'herald.db').resolve()}"

    @property
    def effective_public_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def uses_postgres(self) -> bool:
        return self.effective_database_url.startswith(("postgresql", "postgres"))
