"""Start-up configuration (on both backends where a store is involved): where the
token-signing secret comes from, the permissions of the embedded database's files, and the
email and SMS providers that credentials configure. (Start-up errors as one line and the
unknown-variable warning are tested through the command in tests/test_cli.py.)"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from herald.config import ConfigurationError, Settings
from herald.domain import Channel
from herald.providers.registry import build_providers
from herald.runtime import Runtime
from herald.security import Signer
from herald.storage import schema as t

SECRET = "a-deployment-secret-from-outside-the-database"


@pytest.mark.parametrize("source", ["env", "file"])
async def test_the_token_secret_comes_from_the_environment_or_a_file_not_the_database(
    source: str,
    settings_factory: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    if source == "env":
        monkeypatch.setenv("HERALD_TOKEN_SECRET", SECRET)
    else:
        secret_file = tmp_path / "token-secret"
        secret_file.write_text(SECRET + "\n")
        monkeypatch.setenv("HERALD_TOKEN_SECRET_FILE", str(secret_file))
    rt = Runtime.from_settings(settings_factory())
    await rt.start(migrate=not rt.settings.uses_postgres)
    try:
        now = rt.clock.now()
        token, _ = rt.signer.inbox_token("42", now, timedelta(minutes=5))
        assert Signer(SECRET).verify("inbox", token, now)["sub"] == "42"
        async with rt.storage.database.reading() as db:
            stored = await db.scalar(
                sa.select(sa.func.count()).where(t.settings_kv.c.value.contains(SECRET[:20]))
            )
        assert stored == 0  # the secret was not written to the database
    finally:
        await rt.close()


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"HERALD_TOKEN_SECRET_FILE": "/nonexistent/secret"}, "No such file"),
        ({"HERALD_TOKEN_SECRET": "short"}, "at least 16 characters"),
        ({"HERALD_TOKEN_SECRET": SECRET, "HERALD_SECRET_KEY": SECRET}, "set only one of"),
    ],
)
def test_an_unusable_token_secret_is_a_configuration_error(
    variables: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        Settings()


@pytest.mark.parametrize("backend", ["embedded"])  # PostgreSQL keeps no files of Herald's
async def test_the_embedded_database_files_are_private(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    previous = os.umask(0o022)  # the usual umask, which left the files 0644
    try:
        settings = settings_factory(data_dir=tmp_path / "data")
        rt = Runtime.from_settings(settings)
        await rt.start()
        try:
            await rt.storage.keys.get_or_create_setting("probe", lambda: "written")  # a WAL write
            data = settings.data_dir
            database = data / "herald.db"
            modes = {
                path.name: stat.S_IMODE(path.stat().st_mode)
                for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm"))
            }
            assert modes == {"herald.db": 0o600, "herald.db-wal": 0o600, "herald.db-shm": 0o600}
            assert stat.S_IMODE(data.stat().st_mode) == 0o700
        finally:
            await rt.close()
    finally:
        os.umask(previous)


@pytest.mark.parametrize("backend", ["embedded"])
async def test_an_older_world_readable_database_is_narrowed_at_start(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    database = data / "herald.db"
    database.touch(mode=0o644)
    database.chmod(0o644)
    rt = Runtime.from_settings(settings_factory(data_dir=data))
    await rt.start()
    await rt.close()
    assert stat.S_IMODE(database.stat().st_mode) == 0o600


TWILIO = {
    "twilio_account_sid": "AC" + "1" * 32,
    "twilio_auth_token": "twilio-auth-token",
    "twilio_from": "+15005550006",
}


@pytest.mark.parametrize(
    ("given", "email", "sms"),
    [
        # Credentials alone configure their channel, as push does (they were ignored).
        ({**TWILIO, "sendgrid_api_key": "SG.key"}, ["sendgrid"], ["twilio"]),
        ({"smtp_host": "mail.example", "sendgrid_api_key": "SG.key"}, ["smtp", "sendgrid"], []),
        # A list, even an empty one or "sandbox", is the deployment's word.
        ({**TWILIO, "sms_providers": "sandbox", "email_providers": ""}, [], []),
        (
            {**TWILIO, "email_providers": "sendgrid", "sendgrid_api_key": "k"},
            ["sendgrid"],
            ["twilio"],
        ),
    ],
)
async def test_email_and_sms_providers_come_from_their_credentials(
    given: dict[str, str],
    email: list[str],
    sms: list[str],
    settings_factory: Callable[..., Settings],
    runtime: Runtime,
) -> None:
    settings = settings_factory(**given)
    providers = build_providers(settings, runtime.storage, runtime.hub)

    def names(channel: Channel) -> list[str]:
        return [p.name for p in providers.by_channel[channel] if p.name != "sandbox"]

    assert names(Channel.EMAIL) == email
    assert names(Channel.SMS) == sms
    await providers.close()


def test_incomplete_twilio_credentials_are_warned_about() -> None:
    settings = Settings(twilio_auth_token="only-the-token")
    assert settings.sms_providers == []
    assert settings.startup_warnings({}) == [
        "Twilio credentials are incomplete (HERALD_TWILIO_ACCOUNT_SID, HERALD_TWILIO_FROM "
        "not set): SMS does not use Twilio"
    ]


def test_refuse_sandbox_names_the_channels_that_would_use_it(runtime: Runtime) -> None:
    settings = Settings(refuse_sandbox=True, **TWILIO)
    with pytest.raises(ConfigurationError, match=r"push \(android\).*email") as refused:
        build_providers(settings, runtime.storage, runtime.hub)
    assert "sms" not in str(refused.value)


def test_the_new_channels_are_served_without_credentials_of_ours(runtime: Runtime) -> None:
    providers = build_providers(Settings(), runtime.storage, runtime.hub)
    assert [p.name for p in providers.by_channel[Channel.WEBHOOK]] == ["webhook"]
    assert {k: [p.name for p in v] for k, v in providers.chat_by_service.items()} == {
        "slack": ["slack"],
        "teams": ["teams"],
        "discord": ["discord"],
    }
    assert [p.name for p in providers.by_channel[Channel.WHATSAPP]] == ["sandbox"]
    configured = build_providers(
        Settings(twilio_whatsapp_from="+14155238886", **TWILIO), runtime.storage, runtime.hub
    )
    assert [p.name for p in configured.by_channel[Channel.WHATSAPP]] == ["whatsapp"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("email_brand_color", "red; background: url(x)"),
        ("email_brand_background", "#12345"),
        ("email_brand_logo_url", "http://cdn.example.com/logo.png"),
        ("email_brand_name", ""),
    ],
)
def test_email_branding_is_checked(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        Settings(**{name: value})


def test_the_new_settings_are_known_variables() -> None:
    environ = {
        "HERALD_SLACK_BOT_TOKEN": "xoxb-1",
        "HERALD_TWILIO_WHATSAPP_FROM": "+14155238886",
        "HERALD_EMAIL_BRAND_NAME": "Acme",
        "HERALD_SLACK_BOT_TOKN": "typo",
    }
    assert Settings().startup_warnings(environ) == [
        "unknown variables, ignored: HERALD_SLACK_BOT_TOKN (did you mean HERALD_SLACK_BOT_TOKEN?)"
    ]
