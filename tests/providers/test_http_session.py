"""CurlSession, FCM's and APNs' transport (libcurl on the event loop): what the providers
rely on beyond their own tests. Certificates are verified (HERALD_CA_FILE is trusted in
addition to the system roots), a redirect is the answer, a cancelled or closed request
leaves the session usable or fails cleanly, an HTTP/2-only session refuses HTTP/1.1."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from herald.fakes.tls import LocalTls, generate_local_tls
from herald.providers.http_session import NETWORK_ERRORS, CurlSession, _trust_bundle
from tests.providers.conftest import free_tcp_port


@contextlib.asynccontextmanager
async def server(tls: LocalTls | None, delay: float = 0.0) -> AsyncIterator[str]:
    """An aiohttp server (HTTP/1.1 only) answering POST /echo with its body and GET /moved
    with a 302 to /elsewhere; yields its base URL."""

    async def echo(request: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        return web.Response(body=await request.read(), headers={"Retry-After": "7"})

    async def moved(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "/elsewhere"})

    app = web.Application()
    app.router.add_post("/echo", echo)
    app.router.add_post("/moved", moved)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_tcp_port()
    context = None
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls.cert_file, tls.key_file)
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_posts_and_reads_status_body_and_the_asked_headers(local_tls: LocalTls) -> None:
    session = CurlSession(connections=4, timeout_s=5, ca_file=local_tls.ca_file)
    try:
        async with server(local_tls) as url:
            answers = await asyncio.gather(
                *(
                    session.post(
                        f"{url}/echo",
                        {"content-type": "application/json"},
                        f'{{"n": {i}}}'.encode(),
                        read_headers=("retry-after", "x-absent"),
                    )
                    for i in range(20)
                )
            )
    finally:
        await session.close()
    assert [a.status for a in answers] == [200] * 20
    assert [a.body for a in answers] == [f'{{"n": {i}}}'.encode() for i in range(20)]
    assert all(a.headers == {"retry-after": "7"} for a in answers)


async def test_a_certificate_no_trusted_ca_signed_is_refused(
    local_tls: LocalTls, tmp_path: Path
) -> None:
    other_ca = generate_local_tls(tmp_path / "other").ca_file
    for ca_file in (None, other_ca):  # the system roots alone, and plus an unrelated CA
        session = CurlSession(connections=1, timeout_s=5, ca_file=ca_file)
        try:
            async with server(local_tls) as url:
                with pytest.raises(NETWORK_ERRORS, match=r"SSL|certificate"):
                    await session.post(f"{url}/echo", {}, b"x")
        finally:
            await session.close()


def test_the_ca_file_is_trusted_in_addition_to_the_system_roots(local_tls: LocalTls) -> None:
    system = ssl.get_default_verify_paths().cafile
    bundle = _trust_bundle(local_tls.ca_file)
    assert bundle is not None
    trusted = Path(bundle).read_bytes()
    assert local_tls.ca_file.read_bytes() in trusted
    if system and Path(system).is_file():
        assert Path(system).read_bytes() in trusted
    assert _trust_bundle(local_tls.ca_file) == bundle  # written once per process
    assert _trust_bundle(None) == (system if system and Path(system).is_file() else None)


def test_a_ca_file_without_a_certificate_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ValueError, match="no PEM certificate"):
        CurlSession(connections=1, timeout_s=5, ca_file=bad)


async def test_a_redirect_is_the_answer_and_is_not_followed() -> None:
    session = CurlSession(connections=1, timeout_s=5)
    try:
        async with server(None) as url:
            answer = await session.post(f"{url}/moved", {}, b"x")
    finally:
        await session.close()
    assert answer.status == 302


async def test_timeout_then_cancel_then_the_session_still_works(local_tls: LocalTls) -> None:
    session = CurlSession(connections=2, timeout_s=5, ca_file=local_tls.ca_file)
    try:
        async with server(local_tls, delay=0.5) as url:
            with pytest.raises(TimeoutError):
                await session.post(f"{url}/echo", {}, b"slow", timeout_s=0.1)
            pending = asyncio.ensure_future(session.post(f"{url}/echo", {}, b"x"))
            await asyncio.sleep(0.05)
            pending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await pending
            answer = await session.post(f"{url}/echo", {}, b"after")
    finally:
        await session.close()
    assert (answer.status, answer.body) == (200, b"after")


async def test_closing_fails_the_requests_in_flight(local_tls: LocalTls) -> None:
    session = CurlSession(connections=2, timeout_s=5, ca_file=local_tls.ca_file)
    async with server(local_tls, delay=1.0) as url:
        in_flight = asyncio.ensure_future(session.post(f"{url}/echo", {}, b"x"))
        await asyncio.sleep(0.1)
        await session.close()
        with pytest.raises(ConnectionError, match="closed"):
            await in_flight
        with pytest.raises(ConnectionError, match="closed"):
            await session.post(f"{url}/echo", {}, b"x")


async def test_an_http2_only_session_refuses_an_http1_server(local_tls: LocalTls) -> None:
    session = CurlSession(connections=1, timeout_s=5, ca_file=local_tls.ca_file, http2_only=True)
    try:
        async with server(local_tls) as url:
            with pytest.raises(ConnectionError, match="HTTP/2"):
                await session.post(f"{url}/echo", {}, b"x")
    finally:
        await session.close()
