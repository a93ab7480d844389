"""Start-up configuration: where the token-signing secret comes from, the permissions of the
embedded database's files, provider lists from credentials, unknown variables, and start-up
errors as one line."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from herald.config import Settings
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
        async with rt.store.reading() as db:
            stored = await db.scalar(
                sa.select(t.settings_kv.c.value).where(t.settings_kv.c.key == "secret_key")
            )
        assert stored is None  # nothing secret was written to the database
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
            await rt.store.get_or_create_setting("probe", lambda: "written")  # a WAL write
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
