"""The naive baseline: the seed article's loop, on the same fakes and database as Herald.

For each notification: load the user's tokens, check a sent table, send one request per
token sequentially over one kept-alive HTTP/1.1 connection, record the result. No bus, no
batching, no concurrency; the OAuth2 access token is fetched once (as firebase_admin caches
it). It runs after Herald's measurement, when Herald is idle, for at most `max_seconds`.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import psutil

from herald.bench.db import BenchDb
from herald.clock import SYSTEM_CLOCK
from herald.providers.fcm.client import AccessTokens, ServiceAccount
from herald.providers.fcm.payload import fcm_message
from herald.providers.http_session import CurlSession

NAIVE_PREFIX = "naive-"


@dataclass
class BaselineResult:
    notifications: int = 0
    deliveries: int = 0
    failed: int = 0
    elapsed_s: float = 0.0
    cpu_s: float = 0.0
    started_ns: dict[str, int] = field(default_factory=dict)  # delivery id -> send start

    @property
    def deliveries_per_s(self) -> float:
        return self.deliveries / self.elapsed_s if self.elapsed_s else 0.0


async def run_baseline(
    db: BenchDb,
    *,
    credentials: Path,
    ca_file: Path,
    send_base_url: str,
    users: int,
    notifications: int,
    max_seconds: float,
    run_id: str,
    on_progress: Callable[[int], None] | None = None,
) -> BaselineResult:
    account = ServiceAccount.from_file(credentials)
    tls = ssl.create_default_context()
    tls.load_verify_locations(cafile=str(ca_file))
    url = f"{send_base_url}/v1/projects/{account.project_id}/messages:send"
    result = BaselineResult()
    await db.naive_setup()
    me = psutil.Process()
    connector = aiohttp.TCPConnector(limit=1, ssl=tls)  # one HTTP/1.1 connection
    token_session = CurlSession(connections=1, timeout_s=10, ca_file=ca_file)
    try:
        access_token = await AccessTokens(account, SYSTEM_CLOCK).get(token_session)
    finally:
        await token_session.close()
    async with aiohttp.ClientSession(connector=connector) as session:
        headers = {"Authorization": f"Bearer {access_token}", "Content-Type": "application/json"}
        cpu_before = sum(me.cpu_times()[:2])
        started = time.perf_counter()
        for i in range(notifications):
            if time.perf_counter() - started > max_seconds:
                break
            notification_id = f"{NAIVE_PREFIX}{run_id}-{i}"
            user_id = f"u{i % users}"
            tokens = await db.naive_tokens(user_id)
            if await db.naive_already_sent(notification_id):
                continue
            results: list[tuple[str, int]] = []
            for k, token in enumerate(tokens):
                delivery_id = f"{notification_id}-{k}"
                result.started_ns[delivery_id] = time.time_ns()
                body = fcm_message(
                    token,
                    f"Bench #{i}",
                    "naive baseline",
                    None,
                    delivery_id=delivery_id,
                    ttl_seconds=3600,
                )
                async with session.post(url, data=orjson.dumps(body), headers=headers) as answer:
                    await answer.read()
                    results.append((token, answer.status))
                if answer.status == 200:
                    result.deliveries += 1
                else:
                    result.failed += 1
            await db.naive_record(notification_id, results)
            result.notifications += 1
            if on_progress is not None:
                on_progress(result.deliveries)
        result.elapsed_s = time.perf_counter() - started
        result.cpu_s = sum(me.cpu_times()[:2]) - cpu_before
    return result
