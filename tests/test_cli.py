"""The `herald` command's one-shot subcommands."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import orjson
import pytest

from tests.fixtures.serve import HERALD, HeraldLauncher


def herald(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [HERALD, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_keys_create_prints_a_working_key_once(
    tmp_path: Path, herald_env: dict[str, str], launch_herald: HeraldLauncher
) -> None:
    result = herald("keys", "create", "--scope", "send", "--name", "backend", env=herald_env)
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()
    assert key.startswith("hk_")
    assert key.split("_")[-1] not in (tmp_path / "data" / "herald.db").read_bytes().decode(
        errors="replace"
    )
    server = launch_herald("serve")
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}) as client:
        assert client.get("/v1/templates").status_code == 200  # read is part of send
        assert client.put("/v1/users/1", json={}).status_code == 403  # manage is not


def test_migrate_creates_the_schema_and_is_repeatable(herald_env: dict[str, str]) -> None:
    for _ in range(2):
        result = herald("migrate", env=herald_env)
        assert result.returncode == 0, result.stderr
        assert "schema up to date" in result.stdout


def test_bad_configuration_is_a_clear_error(herald_env: dict[str, str]) -> None:
    result = herald("serve", env={**herald_env, "HERALD_API_KEY": "not-a-key"})
    assert result.returncode == 2
    assert "HERALD_API_KEY must look like" in result.stderr


def test_worker_refuses_an_unknown_channel(herald_env: dict[str, str]) -> None:
    result = herald("worker", "--channel", "fax", env=herald_env)
    assert result.returncode == 2
    assert "fax" in result.stderr


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"HERALD_SMS_PROVIDERS": "twilio"}, "'twilio' is named in HERALD_SMS_PROVIDERS but not"),
        ({"HERALD_EMAIL_PROVIDERS": "pigeon"}, "unknown email provider 'pigeon'"),
        ({"HERALD_PORT": "eighty"}, "HERALD_PORT: Input should be a valid integer"),
        ({"HERALD_RATE_LIMITS": "not json"}, 'error parsing value for field "rate_limits"'),
        ({"HERALD_DATABASE_URL": "mysql://db/herald"}, "HERALD_DATABASE_URL: unsupported scheme"),
        ({"HERALD_FCM_CREDENTIALS": "/nonexistent/fcm.json"}, "the fcm provider cannot be"),
        ({"HERALD_TOKEN_SECRET_FILE": "/nonexistent/secret"}, "HERALD_TOKEN_SECRET_FILE"),
        ({"HERALD_REFUSE_SANDBOX": "1"}, "HERALD_REFUSE_SANDBOX is set and push (android)"),
    ],
)
def test_a_start_up_configuration_error_is_one_line_and_exit_code_2(
    variables: dict[str, str], expected: str, herald_env: dict[str, str]
) -> None:
    result = herald("serve", "--port", "0", env={**herald_env, **variables})

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    said = [line for line in result.stderr.splitlines() if line.startswith("herald:")]
    assert len(said) == 1, result.stderr
    assert said[0].startswith("herald: cannot start: ")
    assert expected in said[0]


def test_unknown_herald_variables_are_named_with_a_suggestion(
    herald_env: dict[str, str],
) -> None:
    env = {**herald_env, "HERALD_FCM_CREDENTIAL": "/etc/fcm.json", "HERALD_COLOUR": "blue"}
    result = herald("migrate", env=env)

    assert result.returncode == 0, result.stderr
    [warning] = [
        orjson.loads(line)
        for line in result.stderr.splitlines()
        if line.startswith("{") and "unknown variables" in line
    ]
    assert warning["level"] == "warning"
    assert warning["event"] == (
        "configuration: unknown variables, ignored: HERALD_COLOUR, "
        "HERALD_FCM_CREDENTIAL (did you mean HERALD_FCM_CREDENTIALS?)"
    )
