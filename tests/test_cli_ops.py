"""The operator's commands end to end, against a running `herald serve` (embedded, and on
PostgreSQL + Kafka): keys list/revoke, send (followed until final), status, tail; and
their errors, one line each, never a traceback."""

from __future__ import annotations

import os
import queue
import subprocess
import threading

import pytest

from tests.fixtures.herald import secret_of
from tests.fixtures.serve import HERALD, HeraldLauncher, HeraldProcess

BACKENDS = [
    "embedded",
    pytest.param("production", marks=[pytest.mark.postgres, pytest.mark.kafka]),
]


@pytest.fixture(params=BACKENDS)
def herald(request: pytest.FixtureRequest, launch_herald: HeraldLauncher) -> HeraldProcess:
    if request.param == "production":
        request.getfixturevalue("fleet_env")
    process = launch_herald("serve")
    with process.client() as client:
        assert client.put("/v1/users/42", json={"timezone": "UTC"}).status_code == 201
    return process


def run(
    herald: HeraldProcess, *args: str, key: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **herald.env, "HERALD_API_KEY": key or herald.key}
    return subprocess.run([HERALD, *args], env=env, capture_output=True, text=True, timeout=120)


def assert_one_line_error(done: subprocess.CompletedProcess[str], text: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("herald ")]
    assert len(errors) == 1, done.stderr
    assert text in errors[0]


def send(
    herald: HeraldProcess, *extra: str, key: str | None = None
) -> subprocess.CompletedProcess[str]:
    args = ("send", "--user", "42", "--channel", "in_app", "--url", herald.url, *extra)
    return run(herald, *args, key=key)


def test_keys_list_and_revoke(herald: HeraldProcess) -> None:
    created = run(herald, "keys", "create", "--scope", "read", "--name", "reader")
    token = created.stdout.strip()
    key_id = token.split("_")[1]
    listed = run(herald, "keys", "list")
    assert listed.returncode == 0
    (row,) = [line for line in listed.stdout.splitlines() if line.startswith(key_id)]
    assert row.split()[1:3] == ["reader", "read"]
    assert secret_of(token) not in listed.stdout
    assert run(herald, "keys", "revoke", key_id).stdout.strip() == f"revoked {key_id}"
    with herald.client() as client:
        client.headers["Authorization"] = f"Bearer {token}"
        assert client.get("/v1/users/42").status_code == 401
    assert_one_line_error(run(herald, "keys", "revoke", key_id), "already revoked")
    assert_one_line_error(run(herald, "keys", "revoke", "0" * 16), "no key with id")


def test_send_follows_the_deliveries_until_final(herald: HeraldProcess) -> None:
    done = send(herald, "--title", "Hello from the shell")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("accepted ")
    assert lines[1].split()[:3] == ["CHANNEL", "PROVIDER", "STATUS"]
    assert lines[2].split()[:3] == ["in_app", "inbox", "delivered"]
    with herald.client() as client:
        inbox = client.get("/v1/users/42/inbox").json()["items"]
    assert [item["title"] for item in inbox] == ["Hello from the shell"]


def test_send_errors_are_one_line(herald: HeraldProcess) -> None:
    assert_one_line_error(send(herald, key="hk_0000000000000000_wrong"), "401 unauthorized")
    unreachable = run(herald, "send", "--user", "42", "--url", "http://127.0.0.1:1")
    assert_one_line_error(unreachable, "cannot reach the API")


def test_status_reports_backends_backlog_and_processes(herald: HeraldProcess) -> None:
    assert send(herald).returncode == 0
    done = run(herald, "status", "--metrics", f"{herald.url}/metrics")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[0].startswith("database  ok")
    assert "backlog   outbox 0" in done.stdout
    assert f"process   ok  {herald.url}/metrics" in done.stdout
    assert "lag herald.worker.in_app.bulk herald.deliveries.in_app: 0" in done.stdout
    missing = run(herald, "status", "--metrics", "http://127.0.0.1:1/metrics")
    assert missing.returncode == 1
    assert "process   UNREACHABLE  http://127.0.0.1:1/metrics" in missing.stdout


def test_tail_prints_and_follows_the_delivery_log(herald: HeraldProcess) -> None:
    first = send(herald).stdout.splitlines()[0].split()[1]
    done = run(herald, "tail", "--no-follow", "--notification", first)
    assert done.returncode == 0
    (line,) = done.stdout.splitlines()
    assert line.split()[1:4] == ["delivered", "in_app", "inbox"]
    assert f"notification={first}" in line
    with following(herald, "tail", "--user", "42", "--state", "delivered", "--last", "1") as lines:
        # The last entry first: once it is printed, the tail is following.
        assert f"notification={first}" in lines.get(timeout=60)
        second = send(herald).stdout.splitlines()[0].split()[1]
        assert f"notification={second}" in lines.get(timeout=60)


@pytest.fixture
def no_server_env(herald_env: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **herald_env, "HERALD_DATABASE_URL": "postgresql://x:y@127.0.0.1:1/x"}


def test_a_database_that_does_not_answer_is_one_line(no_server_env: dict[str, str]) -> None:
    for args, says in (
        (("keys", "list"), "database unreachable"),
        (("tail", "--no-follow"), "database unreachable"),
        (("keys", "create", "--scope", "read"), "Connect call failed"),
        (("migrate",), "Connect call failed"),
    ):
        done = subprocess.run(
            [HERALD, *args], env=no_server_env, capture_output=True, text=True, timeout=120
        )
        assert_one_line_error(done, says)


class following:
    """A `herald` command left running; its stdout lines arrive on a queue."""

    def __init__(self, herald: HeraldProcess, *args: str) -> None:
        env = {**os.environ, **herald.env}
        self.process = subprocess.Popen(
            [HERALD, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: queue.Queue[str] = queue.Queue()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def __enter__(self) -> queue.Queue[str]:
        threading.Thread(target=self._read, daemon=True).start()
        return self.lines

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(10)
