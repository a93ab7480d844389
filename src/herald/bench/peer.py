"""`herald bench --peer firebase-admin`: what a Python shop would run instead of Herald,
on the same FCM sink in the same run: firebase-admin's `messaging.send_each_for_multicast`.

The peer runs in a process of its own (`python -m herald.bench.peer`), after Herald's
measurement and the naive baseline, for at most `max_seconds`. It sends the same number
of deliveries as Herald's run, to the same device tokens, in multicasts of up to
`multicast` tokens (FCM's limit, 500, by default: firebase-admin's best case, one call per
500 deliveries, with no database and no durable state at all). Each multicast carries its
own delivery id in `data`, so the sink's receipts count each (call, token) pair: lost and
duplicated deliveries are counted at the sink as for Herald.

How firebase-admin is pointed at the sink, as its own tests do: the class attribute
`_MessagingService.FCM_URL` (it has no option for the endpoint), the service-account
JSON's `token_uri` (the fakes' OAuth2 token endpoint, which checks the JWT), and the CA
through REQUESTS_CA_BUNDLE / SSL_CERT_FILE. firebase-admin mounts a 100-connection pool on
fcm.googleapis.com; the same adapter is mounted on the sink's URL so that the client
behaves as it does against Google.

CPU is the peer process's own (getrusage, every thread), over the sending loop only:
imports, the app's set-up and one warm-up call (the OAuth2 token, TLS) are left out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from herald.bench.errors import BenchError
from herald.bench.report import percentiles

PEERS = ("firebase-admin",)
FCM_MULTICAST_LIMIT = 500


@dataclass
class PeerResult:
    name: str
    deliveries: int = 0
    failed: int = 0
    elapsed_s: float = 0.0
    cpu_s: float = 0.0
    multicast: int = 0
    calls: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (start ns, tokens)

    @property
    def deliveries_per_s(self) -> float:
        return self.deliveries / self.elapsed_s if self.elapsed_s else 0.0


def call_prefix(run_id: str) -> str:
    return f"peer-{run_id}-"


async def run_peer(
    name: str,
    *,
    work: Path,
    credentials: Path,
    ca_file: Path,
    send_base_url: str,
    users: int,
    devices: int,
    deliveries: int,
    multicast: int,
    max_seconds: float,
    run_id: str,
) -> PeerResult:
    if name not in PEERS:
        raise BenchError(f"unknown peer {name!r} (known: {', '.join(PEERS)})")
    out = work / f"peer-{name}.json"
    argv = [
        sys.executable,
        "-m",
        "herald.bench.peer",
        *("--credentials", str(credentials), "--base-url", send_base_url),
        *("--users", str(users), "--devices", str(devices), "--deliveries", str(deliveries)),
        *("--multicast", str(multicast), "--max-seconds", str(max_seconds)),
        *("--run-id", run_id, "--out", str(out)),
    ]
    env = {**os.environ, "REQUESTS_CA_BUNDLE": str(ca_file), "SSL_CERT_FILE": str(ca_file)}
    log = work / f"peer-{name}.log"
    with log.open("ab") as handle:
        child = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=handle, stderr=handle, start_new_session=True
        )
        code = await child.wait()
    if code != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise BenchError(f"peer {name} exited with {code}:\n{tail}")
    data = orjson.loads(out.read_bytes())
    return PeerResult(
        name=name,
        deliveries=data["deliveries"],
        failed=data["failed"],
        elapsed_s=data["elapsed_s"],
        cpu_s=data["cpu_s"],
        multicast=data["multicast"],
        calls={k: (int(v[0]), int(v[1])) for k, v in data["calls"].items()},
    )


def peer_block(result: PeerResult, lines: Iterable[tuple[str, str, int]]) -> dict[str, Any]:
    """The peer's figures, from its own counts and the sink's receipts of its calls."""
    seen: Counter[tuple[str, str]] = Counter()
    latency: list[float] = []
    for call_id, token, at in lines:
        call = result.calls.get(call_id)
        if call is None:
            continue
        seen[call_id, token] += 1
        if seen[call_id, token] == 1:
            latency.append((at - call[0]) / 1e6)
    attempted = sum(tokens for _start, tokens in result.calls.values())
    return {
        "client": f"firebase-admin {_version()} messaging.send_each_for_multicast",
        "deliveries_per_s": round(result.deliveries_per_s, 1),
        "deliveries": result.deliveries,
        "failed": result.failed,
        "calls": len(result.calls),
        "tokens_per_call": result.multicast,
        "elapsed_s": round(result.elapsed_s, 2),
        "cpu_s": round(result.cpu_s, 3),
        "cpu_s_per_1000": round(1000 * result.cpu_s / result.deliveries, 4)
        if result.deliveries
        else 0.0,
        "latency_ms": percentiles(latency),  # from the call's start to the sink's receipt
        "lost": attempted - len(seen),
        "duplicates": sum(count - 1 for count in seen.values()),
    }


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("firebase-admin")
    except PackageNotFoundError:
        return "(not installed)"


# -- the peer process ---------------------------------------------------------------------


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _send_firebase_admin(args: argparse.Namespace) -> dict[str, Any]:
    import firebase_admin  # the optional `bench` extra
    import requests
    from firebase_admin import _http_client, credentials, messaging

    from herald.bench.harness import android_token
    from herald.providers.push_http import DELIVERY_ID_KEY

    base = args.base_url.rstrip("/")
    messaging._MessagingService.FCM_URL = base + "/v1/projects/{0}/messages:send"
    app = firebase_admin.initialize_app(
        credentials.Certificate(str(args.credentials)), name=f"bench-{args.run_id}"
    )
    service = messaging._get_messaging_service(app)
    service._client.session.mount(
        base,
        requests.adapters.HTTPAdapter(
            pool_connections=100, pool_maxsize=100, max_retries=_http_client.DEFAULT_RETRY_CONFIG
        ),
    )
    prefix = call_prefix(args.run_id)

    def multicast(call_id: str, tokens: list[str], title: str) -> Any:
        message = messaging.MulticastMessage(
            tokens=tokens,
            notification=messaging.Notification(title=title, body="Your order has shipped"),
            data={DELIVERY_ID_KEY: call_id, "order": call_id},
            android=messaging.AndroidConfig(ttl=3600, priority="normal"),
        )
        return messaging.send_each_for_multicast(message, app=app)

    warm = multicast(prefix + "warmup", [android_token(0, 0)], "warm-up")
    if warm.success_count != 1:
        raise SystemExit(f"the warm-up multicast failed: {warm.responses[0].exception!r}")
    # A multicast's tokens must be distinct (the sink counts (call, token) pairs): a window
    # of the cyclic token sequence no longer than users x devices has no repeats.
    size = max(1, min(args.multicast, args.users * args.devices, FCM_MULTICAST_LIMIT))
    calls: dict[str, tuple[int, int]] = {}
    delivered = failed = 0
    cpu_before, started = _cpu_s(), time.perf_counter()
    for first in range(0, args.deliveries, size):
        if time.perf_counter() - started > args.max_seconds:
            break
        tokens = [
            android_token(n // args.devices % args.users, n % args.devices)
            for n in range(first, min(args.deliveries, first + size))
        ]
        call_id = f"{prefix}{first}"
        calls[call_id] = (time.time_ns(), len(tokens))
        answer = multicast(call_id, tokens, f"Bench #{first}")
        delivered += answer.success_count
        failed += answer.failure_count
    elapsed, cpu = time.perf_counter() - started, _cpu_s() - cpu_before
    firebase_admin.delete_app(app)
    return {
        "deliveries": delivered,
        "failed": failed,
        "elapsed_s": elapsed,
        "cpu_s": cpu,
        "multicast": size,
        "calls": calls,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="herald.bench.peer")
    parser.add_argument("--credentials", type=Path, required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--deliveries", type=int, required=True)
    parser.add_argument("--multicast", type=int, default=FCM_MULTICAST_LIMIT)
    parser.add_argument("--max-seconds", type=float, default=10.0)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.write_bytes(orjson.dumps(_send_firebase_admin(args)))


if __name__ == "__main__":
    main()
