"""Every line a Herald process writes to stderr is one JSON object: its own events, the
standard library's loggers (uvicorn, alembic) and errors; `herald migrate` and `herald keys
create` say nothing beyond their result."""

from __future__ import annotations

import json
import os
import subprocess

import httpx
import pytest

from tests.fixtures.herald import secret_of
from tests.fixtures.serve import HERALD, HeraldLauncher

BACKENDS = ["embedded", pytest.param("production", marks=[pytest.mark.postgres])]


def json_lines(text: str) -> list[dict[str, object]]:
    lines = [line for line in text.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # a line that is not JSON fails here


@pytest.fixture(params=BACKENDS)
def command_env(request: pytest.FixtureRequest, herald_env: dict[str, str]) -> dict[str, str]:
    if request.param == "production":
        herald_env["HERALD_DATABASE_URL"] = request.getfixturevalue("postgres_test_url")
    return {**os.environ, **herald_env}


@pytest.mark.parametrize(
    "args", [("migrate",), ("keys", "create", "--scope", "send")], ids=["migrate", "keys-create"]
)
def test_admin_commands_print_their_result_and_no_noise(
    args: tuple[str, ...], command_env: dict[str, str]
) -> None:
    done = subprocess.run([HERALD, *args], env=command_env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert "setup plugin" not in done.stderr.decode()
    assert json_lines(done.stderr.decode()) == []
    assert len(done.stdout.decode().strip().splitlines()) == 1


def test_every_line_of_a_running_herald_is_json(launch_herald: HeraldLauncher) -> None:
    herald = launch_herald("serve")
    with herald.client() as client:
        assert client.put("/v1/users/7", json={"timezone": "UTC"}).status_code == 201
        assert client.get("/v1/users/missing").status_code == 404
    assert httpx.get(f"{herald.url}/v1/users/7").status_code == 401
    assert herald.stop() == 0
    lines = json_lines(herald.log_path.read_text())
    loggers = {line.get("logger") for line in lines}
    assert "uvicorn.error" in loggers  # the standard library's lines, rendered the same way
    access = [line for line in lines if line["event"] == "request"]
    assert [(a["method"], a["route"], a["status"]) for a in access][-3:] == [
        ("PUT", "/v1/users/{user_id}", 201),
        ("GET", "/v1/users/{user_id}", 404),
        ("GET", "/v1/users/{user_id}", 401),
    ]
    assert secret_of(herald.key) not in herald.log_path.read_text()
