"""`herald bench-clients`: client CPU per provider request, for every HTTP client candidate.

The benchmark sink (`herald.bench.sink`, TLS, here with `--http2`) answers FCM-shaped
`messages:send` POSTs over HTTP/1.1 and HTTP/2 and APNs-shaped `/3/device/<token>` pushes
over HTTP/2. Each candidate runs in a fresh process (`python -m herald.bench.clients`) on
uvloop, as Herald's workers do: it opens its connections with a warm-up of `2 x concurrency`
requests, then sends `requests` more with `concurrency` in flight, each with the real
request shape (FCM: `Authorization: Bearer <token>`, a JSON `messages:send` body; APNs:
`authorization: bearer <ES256 JWT>`, the `apns-*` headers, the `aps` payload) and reads the
status, the body (FCM's `name`) or the `apns-id` header. The figure is the process's CPU
time (user + system, all threads: native clients run their own) over the measured requests,
divided by their number. Candidates run interleaved, `repeats` rounds.

Bodies, headers and tokens are built before the clock starts, so the figure is the
client's own cost (the provider's payload and outcome code is the same for every client).

    herald bench-clients --requests 5000 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from herald.bench.sink import SinkFleet

PROJECT = "herald-bench"
TOPIC = "com.example.herald"
Answer = tuple[int, str]  # status, FCM message name or apns-id
Send = Callable[[int], Awaitable[Answer]]


@dataclass(frozen=True, slots=True)
class Candidate:
    name: str  # e.g. "aiohttp"
    provider: str  # "fcm" or "apns"
    http: str  # "1.1" or "2"
    module: str  # the import that must work for it to run
    note: str = ""
    package: str = ""  # the distribution whose version is shown (default: `module`)

    @property
    def key(self) -> str:
        return f"{self.provider}:{self.name}:h{self.http}"


CANDIDATES: tuple[Candidate, ...] = (
    Candidate("aiohttp", "fcm", "1.1", "aiohttp", "FCM's transport before CurlSession"),
    Candidate("herald-curl", "fcm", "1.1", "pycurl", "http_session.CurlSession: FCM's transport"),
    Candidate("httpx", "fcm", "1.1", "httpx"),
    Candidate("httpx", "fcm", "2", "h2", package="httpx"),
    Candidate("herald-h2", "fcm", "2", "h2", "bench/h2_client.py"),
    Candidate("pyreqwest", "fcm", "1.1", "pyreqwest"),
    Candidate("pyreqwest", "fcm", "2", "pyreqwest"),
    Candidate("rnet", "fcm", "1.1", "rnet"),
    Candidate("rnet", "fcm", "2", "rnet"),
    Candidate("curl-cffi", "fcm", "1.1", "curl_cffi"),
    Candidate("curl-cffi", "fcm", "2", "curl_cffi"),
    Candidate("pycurl", "fcm", "1.1", "pycurl", "CurlMulti on the event loop"),
    Candidate("pycurl", "fcm", "2", "pycurl", "CurlMulti on the event loop"),
    Candidate("niquests", "fcm", "1.1", "niquests"),
    Candidate("niquests", "fcm", "2", "niquests"),
    Candidate("herald-h2", "apns", "2", "h2", "APNs' transport before CurlSession"),
    Candidate("herald-curl", "apns", "2", "pycurl", "http_session.CurlSession: APNs' transport"),
    Candidate("httpx", "apns", "2", "h2", package="httpx"),
    Candidate("pyreqwest", "apns", "2", "pyreqwest"),
    Candidate("rnet", "apns", "2", "rnet"),
    Candidate("curl-cffi", "apns", "2", "curl_cffi"),
    Candidate("pycurl", "apns", "2", "pycurl", "CurlMulti on the event loop"),
    Candidate("niquests", "apns", "2", "niquests"),
)


# --- the request shapes ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Shape:
    """K ready-made requests: path, headers (lower-case names) and body of each."""

    base_url: str
    ca_pem: bytes
    paths: list[str]
    headers: list[dict[str, str]]
    bodies: list[bytes]


def fcm_shape(base_url: str, ca_pem: bytes, count: int) -> Shape:
    from herald.providers.fcm.payload import fcm_message
    from herald.providers.push_http import json_bytes

    access_token = "ya29." + "a" * 160  # the shape of a Google OAuth2 access token
    path = f"/v1/projects/{PROJECT}/messages:send"
    headers = {"authorization": f"Bearer {access_token}", "content-type": "application/json"}
    bodies = []
    for index in range(count):
        token = f"bench{index:08d}:" + "x" * 140
        document = fcm_message(
            token,
            "Payment received",
            "€12.00, thank you",
            {"order": str(index)},
            delivery_id=str(uuid.uuid4()),
            ttl_seconds=3600,
            collapse_key=None,
            high_priority=True,
        )
        bodies.append(json_bytes(document))
    return Shape(base_url, ca_pem, [path] * count, [headers] * count, bodies)


def apns_shape(base_url: str, ca_pem: bytes, count: int) -> Shape:
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    from herald.providers.apns.payload import apns_payload
    from herald.providers.push_http import json_bytes

    key = ec.generate_private_key(ec.SECP256R1())
    provider_token = jwt.encode(
        {"iss": "TEAM123456", "iat": int(time.time())},
        key,
        algorithm="ES256",
        headers={"kid": "KEY1234567"},
    )
    expiration = str(int(time.time()) + 3600)
    paths, headers, bodies = [], [], []
    for index in range(count):
        delivery_id = str(uuid.uuid4())
        paths.append(f"/3/device/{index:064x}")
        headers.append(
            {
                "apns-push-type": "alert",
                "apns-topic": TOPIC,
                "apns-priority": "10",
                "apns-expiration": expiration,
                "apns-id": delivery_id,
                "authorization": f"bearer {provider_token}",
            }
        )
        payload = apns_payload(
            "Payment received",
            "€12.00, thank you",
            {"order": str(index)},
            delivery_id=delivery_id,
        )
        bodies.append(json_bytes(payload))
    return Shape(base_url, ca_pem, paths, headers, bodies)


def _module(name: str) -> Any:
    """An optional candidate's module, untyped: it may not be installed (nor its stubs)."""
    return importlib.import_module(name)


def _fcm_name(body: bytes) -> str:
    try:
        return str(json.loads(body).get("name") or "")
    except ValueError:
        return ""


# --- the candidates' clients (each returns a `send(index)` and a `close()`) ---------------


Client = tuple[Send, Callable[[], Awaitable[None]]]


async def _aiohttp(shape: Shape, provider: str, http: str, ca: Path, concurrency: int) -> Client:
    from herald.providers.http_session import new_session
    from herald.providers.push_http import client_ssl_context

    session = new_session(
        connections=concurrency, timeout_s=10, tls=client_ssl_context(ca), keepalive_s=60
    )

    async def send(index: int) -> Answer:
        url = shape.base_url + shape.paths[index]
        async with session.post(
            url, data=shape.bodies[index], headers=shape.headers[index], allow_redirects=False
        ) as response:
            raw = await response.read()
            return response.status, _answer(provider, raw, response.headers.get("apns-id"))

    return send, session.close


async def _httpx(shape: Shape, provider: str, http: str, ca: Path, concurrency: int) -> Client:
    import httpx

    from herald.providers.push_http import client_ssl_context

    client = httpx.AsyncClient(
        http1=http == "1.1",
        http2=http == "2",
        verify=client_ssl_context(ca),
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        timeout=10,
    )

    async def send(index: int) -> Answer:
        response = await client.post(
            shape.base_url + shape.paths[index],
            content=shape.bodies[index],
            headers=shape.headers[index],
        )
        return response.status_code, _answer(
            provider, response.content, response.headers.get("apns-id")
        )

    return send, client.aclose


async def _herald_h2(shape: Shape, provider: str, http: str, ca: Path, concurrency: int) -> Client:
    from urllib.parse import urlsplit

    from herald.bench.h2_client import H2ClientConnection
    from herald.providers.push_http import client_ssl_context

    parts = urlsplit(shape.base_url)
    connection = await H2ClientConnection.open(
        parts.hostname or "", parts.port or 443, client_ssl_context(ca), 10
    )

    async def send(index: int) -> Answer:
        response = await connection.request(
            "POST", shape.paths[index], shape.headers[index], shape.bodies[index], 10
        )
        return response.status, _answer(provider, response.body, response.headers.get("apns-id"))

    async def close() -> None:
        connection.close()

    return send, close


async def _pyreqwest(shape: Shape, provider: str, http: str, ca: Path, concurrency: int) -> Client:
    from datetime import timedelta

    ClientBuilder = _module("pyreqwest.client").ClientBuilder
    builder = (
        ClientBuilder()
        .add_root_certificate_pem(shape.ca_pem)
        .timeout(timedelta(seconds=10))
        .follow_redirects(False)
        .max_connections(concurrency)
        .pool_max_idle_per_host(concurrency)
    )
    builder = builder.http2(True) if http == "2" else builder.http1_only()
    client = builder.build()

    async def send(index: int) -> Answer:
        request = (
            client.post(shape.base_url + shape.paths[index])
            .headers(shape.headers[index])
            .body_bytes(shape.bodies[index])
            .build()
        )
        response = await request.send()
        raw = bytes(await response.bytes())
        return response.status, _answer(provider, raw, response.get_header("apns-id"))

    return send, client.close


async def _rnet(shape: Shape, provider: str, http: str, ca: Path, concurrency: int) -> Client:
    rnet = _module("rnet")
    client = rnet.Client(
        verify=ca,
        http1_only=http == "1.1",
        http2_only=http == "2",
        allow_redirects=False,
        timeout=10,
        pool_max_size=concurrency,
        pool_max_idle_per_host=concurrency,
    )

    async def send(index: int) -> Answer:
        response = await client.post(
            shape.base_url + shape.paths[index],
            headers=shape.headers[index],
            body=shape.bodies[index],
        )
        raw = await response.bytes()
        apns_id = response.headers["apns-id"]
        status = response.status
        await response.close()
        return int(status), _answer(provider, raw, apns_id.decode() if apns_id else None)

    async def close() -> None:
        return None

    return send, close


async def _curl_cffi(shape: Shape, provider: str, http: str, ca: Path, concurrency: int) -> Client:
    curl_cffi = _module("curl_cffi")
    version = curl_cffi.CurlHttpVersion.V2TLS if http == "2" else curl_cffi.CurlHttpVersion.V1_1
    session = _module("curl_cffi.requests").AsyncSession(
        verify=str(ca), max_clients=concurrency, http_version=version, allow_redirects=False
    )

    async def send(index: int) -> Answer:
        response = await session.post(
            shape.base_url + shape.paths[index],
            data=shape.bodies[index],
            headers=shape.headers[index],
            timeout=10,
        )
        return response.status_code, _answer(
            provider, response.content, response.headers.get("apns-id")
        )

    return send, session.close


async def _herald_curl(
    shape: Shape, provider: str, http: str, ca: Path, concurrency: int
) -> Client:
    from herald.providers.http_session import CurlSession

    session = CurlSession(connections=concurrency, timeout_s=10, ca_file=ca, http2_only=http == "2")
    wanted = ("apns-id", "retry-after") if provider == "apns" else ("retry-after",)

    async def send(index: int) -> Answer:
        response = await session.post(
            shape.base_url + shape.paths[index],
            shape.headers[index],
            shape.bodies[index],
            read_headers=wanted,
        )
        return response.status, _answer(provider, response.body, response.headers.get("apns-id"))

    return send, session.close


async def _pycurl(shape: Shape, provider: str, http: str, ca: Path, concurrency: int) -> Client:
    multi = _CurlMulti(ca, http == "2", concurrency)

    async def send(index: int) -> Answer:
        headers = [f"{k}: {v}" for k, v in shape.headers[index].items()]
        status, raw, apns_id = await multi.post(
            shape.base_url + shape.paths[index], headers, shape.bodies[index]
        )
        return status, _answer(provider, raw, apns_id)

    async def close() -> None:
        multi.close()

    return send, close


async def _niquests(shape: Shape, provider: str, http: str, ca: Path, concurrency: int) -> Client:
    session = _module("niquests").AsyncSession(
        disable_http2=http == "1.1",
        disable_http1=http == "2",
        disable_http3=True,
        pool_connections=1,
        pool_maxsize=concurrency,
    )

    async def send(index: int) -> Answer:
        response = await session.post(
            shape.base_url + shape.paths[index],
            data=shape.bodies[index],
            headers=shape.headers[index],
            allow_redirects=False,
            verify=str(ca),
            timeout=10,
        )
        return int(response.status_code or 0), _answer(
            provider, response.content or b"", response.headers.get("apns-id")
        )

    return send, session.close


FACTORIES: dict[str, Callable[[Shape, str, str, Path, int], Awaitable[Client]]] = {
    "aiohttp": _aiohttp,
    "httpx": _httpx,
    "herald-h2": _herald_h2,
    "herald-curl": _herald_curl,
    "pyreqwest": _pyreqwest,
    "rnet": _rnet,
    "curl-cffi": _curl_cffi,
    "pycurl": _pycurl,
    "niquests": _niquests,
}


def _answer(provider: str, body: bytes, apns_id: str | None) -> str:
    return _fcm_name(body) if provider == "fcm" else (apns_id or "")


class _CurlMulti:
    """pycurl's multi interface driven by the event loop (socket and timer callbacks)."""

    def __init__(self, ca: Path, http2: bool, connections: int) -> None:
        pycurl = _module("pycurl")
        self._pycurl = pycurl
        self._loop = asyncio.get_running_loop()
        self._ca = str(ca)
        self._http2 = http2
        self._multi = pycurl.CurlMulti()
        self._multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        self._multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)
        self._multi.setopt(pycurl.M_MAX_HOST_CONNECTIONS, 1 if http2 else connections)
        if http2:
            self._multi.setopt(pycurl.M_PIPELINING, pycurl.PIPE_MULTIPLEX)
            self._multi.setopt(pycurl.M_MAX_CONCURRENT_STREAMS, 1000)
        self._timer: asyncio.TimerHandle | None = None
        self._watched: dict[int, int] = {}
        self._idle: list[Any] = []
        self._pending: dict[Any, asyncio.Future[None]] = {}

    def _on_socket(self, event: int, fd: int, multi: Any, data: Any) -> None:
        pycurl = self._pycurl
        if self._watched.pop(fd, 0):
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)
        if event == pycurl.POLL_REMOVE:
            return
        if event in (pycurl.POLL_IN, pycurl.POLL_INOUT):
            self._loop.add_reader(fd, self._act, fd, pycurl.CSELECT_IN)
        if event in (pycurl.POLL_OUT, pycurl.POLL_INOUT):
            self._loop.add_writer(fd, self._act, fd, pycurl.CSELECT_OUT)
        self._watched[fd] = event

    def _on_timer(self, timeout_ms: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if timeout_ms >= 0:
            self._timer = self._loop.call_later(timeout_ms / 1000, self._act, -1, 0)

    def _act(self, fd: int, event: int) -> None:
        if fd == -1:
            self._timer = None
            fd = self._pycurl.SOCKET_TIMEOUT
        self._multi.socket_action(fd, event)
        self._collect()

    def _collect(self) -> None:
        while True:
            queued, done, failed = self._multi.info_read()
            for handle in done:
                self._finish(handle, None)
            for handle, _, message in failed:
                self._finish(handle, ConnectionError(message))
            if not queued:
                return

    def _finish(self, handle: Any, error: Exception | None) -> None:
        self._multi.remove_handle(handle)
        future = self._pending.pop(handle)
        if not future.done():
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

    async def post(
        self, url: str, headers: list[str], body: bytes
    ) -> tuple[int, bytes, str | None]:
        import io

        pycurl = self._pycurl
        handle = self._idle.pop() if self._idle else self._new_handle()
        sink = io.BytesIO()
        answer: dict[str, str] = {}

        def header(line: bytes) -> None:
            name, sep, value = line.partition(b":")
            if sep and name.strip().lower() == b"apns-id":
                answer["apns-id"] = value.strip().decode()

        handle.setopt(pycurl.URL, url)
        handle.setopt(pycurl.HTTPHEADER, headers)
        handle.setopt(pycurl.POSTFIELDS, body)
        handle.setopt(pycurl.WRITEDATA, sink)
        handle.setopt(pycurl.HEADERFUNCTION, header)
        future = self._loop.create_future()
        self._pending[handle] = future
        self._multi.add_handle(handle)
        try:
            await future
            return int(handle.getinfo(pycurl.RESPONSE_CODE)), sink.getvalue(), answer.get("apns-id")
        finally:
            self._idle.append(handle)

    def _new_handle(self) -> Any:
        pycurl = self._pycurl
        handle = pycurl.Curl()
        handle.setopt(pycurl.CAINFO, self._ca)
        handle.setopt(pycurl.TIMEOUT, 10)
        handle.setopt(pycurl.NOSIGNAL, 1)
        handle.setopt(
            pycurl.HTTP_VERSION,
            pycurl.CURL_HTTP_VERSION_2TLS if self._http2 else pycurl.CURL_HTTP_VERSION_1_1,
        )
        if self._http2:
            handle.setopt(pycurl.PIPEWAIT, 1)
        return handle

    def close(self) -> None:
        for handle in self._idle:
            handle.close()
        self._multi.close()


# --- one candidate in this process ---------------------------------------------------------


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the process
    return usage.ru_utime + usage.ru_stime


async def _drive(send: Send, start: int, count: int, concurrency: int) -> tuple[int, list[str]]:
    """`count` requests from index `start`, `concurrency` in flight; (ok count, error samples)."""
    next_index = start
    ok = 0
    errors: list[str] = []

    async def lane() -> None:
        nonlocal next_index, ok
        while next_index < start + count:
            index = next_index
            next_index += 1
            try:
                status, answer = await send(index)
            except Exception as error:
                errors.append(f"{type(error).__name__}: {error}"[:200])
                continue
            if status == 200 and answer:
                ok += 1
            else:
                errors.append(f"status {status} answer {answer!r}"[:200])

    await asyncio.gather(*(lane() for _ in range(min(concurrency, count))))
    return ok, errors


async def run_candidate(
    candidate: Candidate, base_url: str, ca: Path, requests: int, concurrency: int
) -> dict[str, Any]:
    ca_pem = await asyncio.to_thread(ca.read_bytes)
    warmup = 2 * concurrency
    build = fcm_shape if candidate.provider == "fcm" else apns_shape
    shape = build(base_url, ca_pem, warmup + requests)
    send, close = await FACTORIES[candidate.name](
        shape, candidate.provider, candidate.http, ca, concurrency
    )
    try:
        _, warm_errors = await _drive(send, 0, warmup, concurrency)
        cpu, wall = _cpu_seconds(), time.perf_counter()
        ok, errors = await _drive(send, warmup, requests, concurrency)
        cpu, wall = _cpu_seconds() - cpu, time.perf_counter() - wall
    finally:
        await close()
    return {
        "candidate": candidate.key,
        "requests": requests,
        "ok": ok,
        "errors": len(errors) + len(warm_errors),
        "error_sample": (warm_errors + errors)[:3],
        "cpu_us_per_request": round(cpu / requests * 1e6, 1),
        "requests_per_s": round(requests / wall, 0),
        "threads": _threads(),
    }


def _threads() -> int:
    with contextlib.suppress(OSError):
        return len(os.listdir("/proc/self/task"))
    return 0


def _child(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="herald.bench.clients")
    parser.add_argument("--candidate", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--ca", type=Path, required=True)
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    args = parser.parse_args(argv)
    candidate = next(c for c in CANDIDATES if c.key == args.candidate)
    import uvloop

    result = uvloop.run(
        run_candidate(candidate, args.url, args.ca, args.requests, args.concurrency)
    )
    print(json.dumps(result), flush=True)


# --- the whole comparison --------------------------------------------------------------------


def unavailable(candidate: Candidate) -> str | None:
    """Why `candidate` cannot run here (its package is not installed), or None."""
    if importlib.util.find_spec(candidate.module) is None:
        return f"`{candidate.module}` is not installed"
    return None


@dataclass(frozen=True, slots=True)
class ClientsConfig:
    requests: int = 5000
    repeats: int = 3
    fcm_concurrency: int = 50
    apns_concurrency: int = 500
    latency_ms: float = 5.0
    only: tuple[str, ...] = ()  # candidate names or keys; empty: all


def run_clients(config: ClientsConfig, progress: Callable[[str], None]) -> dict[str, Any]:
    from herald.fakes.tls import generate_local_tls

    chosen = [
        c for c in CANDIDATES if not config.only or c.name in config.only or c.key in config.only
    ]
    skipped = {c.key: why for c in chosen if (why := unavailable(c)) is not None}
    runnable = [c for c in chosen if c.key not in skipped]
    runs: dict[str, list[dict[str, Any]]] = {c.key: [] for c in runnable}
    with tempfile.TemporaryDirectory(prefix="herald-bench-clients-") as directory:
        tls = generate_local_tls(Path(directory) / "tls")
        sink = SinkFleet(
            Path(directory) / "sink",
            processes=2,
            latency_ms=config.latency_ms,
            cert_file=tls.cert_file,
            key_file=tls.key_file,
            project=PROJECT,
            http2=True,
        )
        sink.start()
        try:
            for repeat in range(config.repeats):
                for candidate in runnable:
                    concurrency = (
                        config.fcm_concurrency
                        if candidate.provider == "fcm"
                        else config.apns_concurrency
                    )
                    result = _run_child(candidate, sink.base_url, tls.ca_file, config, concurrency)
                    runs[candidate.key].append(result)
                    progress(
                        f"round {repeat + 1}/{config.repeats} {candidate.key}: "
                        f"{result.get('cpu_us_per_request')} µs, {result.get('errors')} errors"
                    )
        finally:
            sink.stop()
    return {
        "requests": config.requests,
        "repeats": config.repeats,
        "fcm_concurrency": config.fcm_concurrency,
        "apns_concurrency": config.apns_concurrency,
        "latency_ms": config.latency_ms,
        "candidates": [
            {
                "candidate": c.key,
                "note": c.note,
                "runs": runs[c.key],
                "version": _version(c.package or c.module),
            }
            for c in runnable
        ],
        "skipped": skipped,
    }


def _run_child(
    candidate: Candidate, url: str, ca: Path, config: ClientsConfig, concurrency: int
) -> dict[str, Any]:
    argv = [
        sys.executable,
        "-m",
        "herald.bench.clients",
        "--candidate",
        candidate.key,
        "--url",
        url,
        "--ca",
        str(ca),
        "--requests",
        str(config.requests),
        "--concurrency",
        str(concurrency),
    ]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=300, check=False)
    except subprocess.TimeoutExpired:
        return {"candidate": candidate.key, "failed": "timed out after 300 s"}
    lines = done.stdout.decode().strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = done.stderr.decode().strip().splitlines()[-1:] or ["no output"]
        return {"candidate": candidate.key, "failed": f"exit {done.returncode}: {tail[0]}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    distribution = {"curl_cffi": "curl-cffi", "h2": "h2"}.get(module, module)
    try:
        return version(distribution)
    except PackageNotFoundError:
        return ""


def markdown(report: dict[str, Any]) -> str:
    """One row per candidate: CPU µs per request of each round, the median, requests/s."""
    rows = [
        "| provider | client | HTTP | CPU µs / request (rounds) | median | requests/s (median) "
        "| errors | threads |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for entry in report["candidates"]:
        provider, name, http = entry["candidate"].split(":")
        good = [r for r in entry["runs"] if "cpu_us_per_request" in r]
        failed = [r["failed"] for r in entry["runs"] if "failed" in r]
        label = f"{name} {entry['version']}".strip()
        if not good:
            rows.append(f"| {provider} | {label} | {http[1:]} | failed: {failed[0]} | | | | |")
            continue
        cpus = [r["cpu_us_per_request"] for r in good]
        rates = sorted(r["requests_per_s"] for r in good)
        errors = sum(r["errors"] for r in good)
        rows.append(
            f"| {provider} | {label} | {http[1:]} | {' / '.join(f'{c:.0f}' for c in cpus)} "
            f"| **{_median(cpus):.0f}** | {rates[len(rates) // 2]:,.0f} | {errors} "
            f"| {good[-1]['threads']} |"
        )
    for key, why in report["skipped"].items():
        rows.append(f"| {key.split(':')[0]} | {key.split(':')[1]} | | not run: {why} | | | | |")
    return "\n".join(rows)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


if __name__ == "__main__":
    _child(sys.argv[1:])
