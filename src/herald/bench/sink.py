"""A lean FCM `messages:send` receiver for the benchmark, run as several processes.

The protocol-faithful fake (`herald.fakes.fcm`, hypercorn) spends about 1.4 ms of CPU per
request, so a throughput benchmark against it would measure the fake. This sink answers
FCM-shaped POSTs over TLS and HTTP/1.1 keep-alive with a raw asyncio protocol on uvloop, in
`processes` processes sharing one port (SO_REUSEPORT), after `latency_ms` (a timer, no CPU).
It still checks what a benchmark must not get wrong: the path, a bearer token, a JSON body
with a valid registration token; anything else is answered with FCM's 400/401/404.

With `--http2` it also offers HTTP/2 (ALPN `h2`, on the pure-Python `h2` library) and then
answers APNs-shaped pushes too (`POST /3/device/<hex token>` with `authorization: bearer`,
`apns-topic`, `apns-push-type` and an `aps` payload; 200 with `apns-id`, else Apple's
`{"reason"}`), for `herald bench-clients`.

Every accepted message is a receipt `<herald_delivery_id> <token> <unix ns>` in the
process's receipt file (flushed every 100 ms and at SIGTERM); the harness reads them for
latency, loss and duplicates. The OAuth2 token endpoint stays on the Python fake.

    python -m herald.bench.sink --port P --cert C --key K --latency-ms 5 --receipts DIR
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import orjson

from herald.providers.apns.payload import validate_apns_token
from herald.providers.fcm.payload import validate_fcm_token
from herald.providers.push_http import DELIVERY_ID_KEY

_SEND_SUFFIX = b"/messages:send"
_OK_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json; charset=UTF-8\r\n"


def _response(status: bytes, body: bytes, close: bool = False) -> bytes:
    head = b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json; charset=UTF-8\r\n"
    extra = b"connection: close\r\n" if close else b""
    return head + extra + b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body


def _error(code: int, status: str, message: str) -> bytes:
    reason = {400: b"400 Bad Request", 401: b"401 Unauthorized", 404: b"404 Not Found"}[code]
    body = orjson.dumps({"error": {"code": code, "message": message, "status": status}})
    return _response(reason, body)


_UNAUTHENTICATED = _error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
_NOT_FOUND = _error(404, "NOT_FOUND", "Not found")
_BAD_JSON = _error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
_BAD_TOKEN = _error(
    400, "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token"
)


class Receipts:
    """Buffered receipt lines, flushed by a timer and at exit."""

    def __init__(self, path: Path) -> None:
        self._file: IO[bytes] = path.open("ab")
        self._lines: list[bytes] = []
        self.count = 0

    def add(self, delivery_id: str, token: str) -> None:
        self._lines.append(f"{delivery_id} {token} {time.time_ns()}\n".encode())
        self.count += 1

    def flush(self) -> None:
        if self._lines:
            self._file.write(b"".join(self._lines))
            self._file.flush()
            self._lines.clear()

    def close(self) -> None:
        self.flush()
        self._file.close()


_APNS_PREFIX = b"/3/device/"
_APNS_STATUS = {"MissingProviderToken": 403, "InvalidProviderToken": 403}


def _apns_error(reason: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    body = orjson.dumps({"reason": reason})
    return _APNS_STATUS.get(reason, 400), [(b"content-type", b"application/json")], body


class H2SinkProtocol(asyncio.Protocol):
    """One HTTP/2 connection: FCM's `messages:send` and APNs' `/3/device/<token>`."""

    def __init__(self, receipts: Receipts, latency_s: float, project: str) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self._h2 = h2.connection.H2Connection(config)
        self._receipts = receipts
        self._latency = latency_s
        self._fcm_path = f"/v1/projects/{project}/messages:send".encode()
        self._requests: dict[int, tuple[dict[bytes, bytes], bytearray]] = {}
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's SSL transport
        self._h2.initiate_connection()
        self._h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000})
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._flush()
            if self._transport is not None:
                self._transport.close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                headers = {bytes(k): bytes(v) for k, v in event.headers or ()}
                self._requests[event.stream_id] = (headers, bytearray())
            elif isinstance(event, h2.events.DataReceived):
                request = self._requests.get(event.stream_id)
                if request is not None:
                    request[1].extend(event.data or b"")
                self._h2.acknowledge_received_data(
                    event.flow_controlled_length or 0, event.stream_id
                )
            elif isinstance(event, h2.events.StreamEnded):
                request = self._requests.pop(event.stream_id, None)
                if request is not None:
                    self._answer(event.stream_id, *self._handle(*request))
            elif isinstance(event, h2.events.StreamReset):
                self._requests.pop(event.stream_id, None)
        self._flush()

    def _handle(
        self, headers: dict[bytes, bytes], body: bytearray
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        path = headers.get(b":path", b"")
        authorization = headers.get(b"authorization", b"")
        if headers.get(b":method") != b"POST":
            return 405, [], b""
        if path.startswith(_APNS_PREFIX):
            return self._apns(path[len(_APNS_PREFIX) :].decode(), headers, authorization, body)
        response = _fcm_answer(path, self._fcm_path, authorization, bytes(body), self._receipts)
        head, _, answer = response.partition(b"\r\n\r\n")
        status = int(head[9:12])
        return status, [(b"content-type", b"application/json; charset=UTF-8")], answer

    def _apns(
        self, token: str, headers: dict[bytes, bytes], authorization: bytes, body: bytearray
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        if not authorization:
            return _apns_error("MissingProviderToken")
        if not authorization.startswith(b"bearer ") or len(authorization) < 20:
            return _apns_error("InvalidProviderToken")
        if not headers.get(b"apns-topic"):
            return _apns_error("MissingTopic")
        if not headers.get(b"apns-push-type"):
            return _apns_error("InvalidPushType")
        if validate_apns_token(token):
            return _apns_error("BadDeviceToken")
        try:
            payload = orjson.loads(body)
            delivery_id = payload[DELIVERY_ID_KEY]
            if not isinstance(payload["aps"], dict):
                raise TypeError("aps")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return _apns_error("BadPayload")
        self._receipts.add(str(delivery_id), token)
        apns_id = headers.get(b"apns-id") or str(uuid.uuid4()).encode()
        return 200, [(b"apns-id", apns_id)], b""

    def _answer(
        self, stream_id: int, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        if self._latency > 0:
            self._loop.call_later(self._latency, self._respond, stream_id, status, headers, body)
        else:
            self._respond(stream_id, status, headers, body)

    def _respond(
        self, stream_id: int, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        head = [(b":status", str(status).encode()), *headers]
        if body:
            head.append((b"content-length", str(len(body)).encode()))
        try:
            self._h2.send_headers(stream_id, head, end_stream=not body)
            if body:
                self._h2.send_data(stream_id, body, end_stream=True)
        except h2.exceptions.ProtocolError:
            pass  # the client reset the stream meanwhile
        self._flush()

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)


def _fcm_answer(
    path: bytes, expected_path: bytes, authorization: bytes, body: bytes, receipts: Receipts
) -> bytes:
    """The whole HTTP/1.1 response to one FCM `messages:send` request."""
    if path != expected_path:
        return _NOT_FOUND
    if not authorization.startswith(b"Bearer ") or len(authorization) < 20:
        return _UNAUTHENTICATED
    try:
        message = orjson.loads(body)["message"]
        token = message["token"]
        delivery_id = message["data"][DELIVERY_ID_KEY]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return _BAD_JSON
    if not isinstance(token, str) or validate_fcm_token(token):
        return _BAD_TOKEN
    receipts.add(str(delivery_id), token)
    answer = b'{"name":"projects/p/messages/' + os.urandom(8).hex().encode() + b'"}'
    return _OK_HEAD + b"content-length: " + str(len(answer)).encode() + b"\r\n\r\n" + answer


class AlpnProtocol(asyncio.Protocol):
    """HTTP/2 when the client chose `h2` in ALPN, HTTP/1.1 otherwise."""

    def __init__(self, receipts: Receipts, latency_s: float, project: str) -> None:
        self._args = (receipts, latency_s, project)
        self._inner: asyncio.Protocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        chosen = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        protocol = H2SinkProtocol if chosen == "h2" else SinkProtocol
        self._inner = protocol(*self._args)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        assert self._inner is not None
        self._inner.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._inner.connection_lost(exc)


class SinkProtocol(asyncio.Protocol):
    def __init__(self, receipts: Receipts, latency_s: float, project: str) -> None:
        self._receipts = receipts
        self._latency = latency_s
        self._path = f"/v1/projects/{project}/messages:send".encode()
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's SSL transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buffer[:end])
            length = 0
            authorization = b""
            lines = head.split(b"\r\n")
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                lowered = name.strip().lower()
                if lowered == b"content-length":
                    length = int(value)
                elif lowered == b"authorization":
                    authorization = value.strip()
            if len(self._buffer) < end + 4 + length:
                return
            body = bytes(self._buffer[end + 4 : end + 4 + length])
            del self._buffer[: end + 4 + length]
            self._answer(self._handle(lines[0], authorization, body))

    def _handle(self, request_line: bytes, authorization: bytes, body: bytes) -> bytes:
        method, _, rest = request_line.partition(b" ")
        if method != b"POST":
            return _NOT_FOUND
        path = rest.partition(b" ")[0]
        return _fcm_answer(path, self._path, authorization, body, self._receipts)

    def _answer(self, response: bytes) -> None:
        if self._latency > 0:
            self._loop.call_later(self._latency, self._write, response)
        else:
            self._write(response)

    def _write(self, response: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(response)


def reuseport_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def serve(
    sock: socket.socket,
    tls: ssl.SSLContext | None,
    latency_s: float,
    project: str,
    receipts: Receipts,
    http2: bool = False,
) -> None:
    loop = asyncio.get_running_loop()
    factory = AlpnProtocol if http2 else SinkProtocol
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = await loop.create_server(
        lambda: factory(receipts, latency_s, project), sock=sock, ssl=tls, backlog=1024
    )
    print("ready", flush=True)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)
        receipts.flush()
    server.close()
    receipts.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="herald.bench.sink")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--project", default="herald-test")
    parser.add_argument("--receipts", type=Path, required=True)
    parser.add_argument("--http2", action="store_true", help="offer h2 in ALPN as well")
    args = parser.parse_args(argv)
    tls: ssl.SSLContext | None = None
    if args.cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args.cert, args.key)
        tls.set_alpn_protocols(["h2", "http/1.1"] if args.http2 else ["http/1.1"])
    sock = reuseport_socket(args.host, args.port)
    receipts = Receipts(args.receipts / f"receipts-{os.getpid()}.log")
    try:
        import uvloop

        uvloop.run(serve(sock, tls, args.latency_ms / 1000, args.project, receipts, args.http2))
    except ImportError:  # pragma: no cover - uvloop is a pinned dependency
        asyncio.run(serve(sock, tls, args.latency_ms / 1000, args.project, receipts, args.http2))


@dataclass
class SinkFleet:
    """`processes` sink processes on one port; `receipts()` reads what they accepted."""

    directory: Path
    processes: int = 2
    latency_ms: float = 5.0
    cert_file: Path | None = None
    key_file: Path | None = None
    project: str = "herald-test"
    host: str = "127.0.0.1"
    port: int = 0
    http2: bool = False
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        scheme = "https" if self.cert_file else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        # Hold a SO_REUSEPORT socket on a free port while the children bind it too.
        holder = reuseport_socket(self.host, 0)
        self.port = holder.getsockname()[1]
        argv = [
            sys.executable,
            "-m",
            "herald.bench.sink",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--latency-ms",
            str(self.latency_ms),
            "--project",
            self.project,
            "--receipts",
            str(self.directory),
        ]
        if self.cert_file and self.key_file:
            argv += ["--cert", str(self.cert_file), "--key", str(self.key_file)]
        if self.http2:
            argv.append("--http2")
        try:
            for _ in range(self.processes):
                self.children.append(
                    subprocess.Popen(
                        argv,
                        stdout=subprocess.PIPE,
                        stderr=(self.directory / "sink.err").open("ab"),
                        start_new_session=True,
                    )
                )
            for child in self.children:
                assert child.stdout is not None
                if child.stdout.readline().strip() != b"ready":
                    raise RuntimeError(f"FCM sink did not start: see {self.directory}/sink.err")
        finally:
            holder.close()  # before it took a connection: the kernel spreads over the rest

    def pids(self) -> list[int]:
        return [child.pid for child in self.children]

    def stop(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in self.children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(5)
        self.children.clear()

    def flush_delay(self) -> float:
        """How long to wait for the children's timers to write what they accepted."""
        return 0.3

    def receipts(self) -> Iterator[tuple[str, str, int]]:
        for path in sorted(self.directory.glob("receipts-*.log")):
            with path.open("rb") as handle:
                for line in handle:
                    delivery_id, token, at = line.split()
                    yield delivery_id.decode(), token.decode(), int(at)


if __name__ == "__main__":
    main()
