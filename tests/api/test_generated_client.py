"""A client generated from /openapi.json by an independent generator
(openapi-python-client) runs the README's first-notification flow against a running
Herald: what the document says is what the API does."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.fixtures.serve import HERALD, HeraldLauncher, HeraldProcess

GENERATOR = str(Path(HERALD).with_name("openapi-python-client"))
BACKENDS = [
    "embedded",
    pytest.param("production", marks=[pytest.mark.postgres, pytest.mark.kafka]),
]


@pytest.fixture(params=BACKENDS)
def herald(request: pytest.FixtureRequest, launch_herald: HeraldLauncher) -> HeraldProcess:
    if request.param == "production":
        request.getfixturevalue("fleet_env")
    return launch_herald("serve")


def generate_client(herald: HeraldProcess, where: Path) -> ModuleType:
    spec = where / "openapi.json"
    spec.write_bytes(httpx.get(f"{herald.url}/openapi.json").content)
    package = f"herald_client_{where.name.replace('-', '_')}"
    env = {**os.environ, "PATH": f"{Path(HERALD).parent}:{os.environ.get('PATH', '')}"}
    command = [GENERATOR, "generate", "--path", str(spec), "--meta", "none", "--output-path"]
    done = subprocess.run(
        [*command, str(where / package)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    sys.path.insert(0, str(where))
    try:
        return importlib.import_module(package)
    finally:
        sys.path.remove(str(where))


def module(client: ModuleType, name: str) -> Any:
    return importlib.import_module(f"{client.__name__}.{name}")


def test_the_first_notification_through_a_generated_client(
    herald: HeraldProcess, tmp_path: Path
) -> None:
    generated = generate_client(herald, tmp_path)
    models = module(generated, "models")
    client = generated.AuthenticatedClient(base_url=herald.url, token=herald.key)

    put_user = module(generated, "api.users.put_user")
    created = put_user.sync_detailed(
        "42",
        client=client,
        body=models.UserIn(
            email="ada@example.com", phone="+14155550100", timezone="Europe/Berlin", locale="en"
        ),
    )
    assert created.status_code == 201
    assert isinstance(created.parsed, models.UserOut)
    assert created.parsed.timezone == "Europe/Berlin"

    add_device = module(generated, "api.users.add_device")
    device = add_device.sync_detailed(
        "42", client=client, body=models.DeviceIn(platform=models.Platform.IOS, token="ab" * 32)
    )
    assert device.status_code == 201
    assert device.parsed.active is True

    post = module(generated, "api.notifications.post_notification")
    body = models.NotificationIn(
        user_id="42", category="billing", title="Payment received", body="€12.00, thank you"
    )
    accepted = post.sync_detailed(client=client, body=body, idempotency_key="payment-1001")
    assert accepted.status_code == 202
    again = post.sync_detailed(client=client, body=body, idempotency_key="payment-1001")
    assert (again.status_code, again.parsed.id) == (200, accepted.parsed.id)

    get = module(generated, "api.notifications.get_notification")
    deliveries = wait_for_deliveries(get, client, accepted.parsed.id)
    assert sorted(d.channel for d in deliveries) == ["email", "in_app", "push", "sms"]

    events = module(generated, "api.notifications.get_events").sync(
        accepted.parsed.id, client=client
    )
    assert {e.delivery_id for e in events.items} >= {d.id for d in deliveries}
    sandbox = module(generated, "api.admin.sandbox_messages").sync(client=client)
    assert sorted(m.channel for m in sandbox.items) == ["email", "push", "sms"]
    inbox = module(generated, "api.inbox.list_inbox").sync("42", client=client)
    assert [item.title for item in inbox.items] == ["Payment received"]

    missing = get.sync_detailed("no-such-notification", client=client)
    assert missing.status_code == 404
    assert isinstance(missing.parsed, models.ErrorResponse)
    assert missing.parsed.error.code == "not_found"


def wait_for_deliveries(get: Any, client: Any, notification_id: str) -> list[Any]:
    """Poll until the router and workers are done (the README's "one delivery per channel
    and device")."""
    deadline = time.monotonic() + 60
    while True:
        notification = get.sync(notification_id, client=client)
        busy = [d for d in notification.deliveries if d.status in ("queued", "sending")]
        if len(notification.deliveries) == 4 and not busy:
            return list(notification.deliveries)
        assert time.monotonic() < deadline, f"deliveries did not settle: {notification}"
        time.sleep(0.05)
