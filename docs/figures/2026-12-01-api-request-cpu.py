"""Run: PYTHONPATH=<git archive of a commit>/src MICRO_DB=postgresql://.../db .venv/bin/python docs/figures/2026-12-01-api-request-cpu.py 600
Client CPU per API request (POST /v1/notifications/batch with one item, as the paced
bench sends them), the app in-process over httpx's ASGI transport, on PostgreSQL."""
import asyncio, os, sys, tempfile, time, uuid
from pathlib import Path
import httpx
from herald.api.app import create_app
from herald.config import Settings
from herald.runtime import Runtime
from herald.security import generate_key

N = int(sys.argv[1]) if len(sys.argv) > 1 else 600

async def main() -> None:
    settings = Settings(data_dir=Path(tempfile.mkdtemp()), log_format="json", database_url=os.environ["MICRO_DB"],
                        kafka_bootstrap=None, api_key=None)
    rt = Runtime.from_settings(settings)
    await rt.start(migrate=True)
    key = generate_key()
    await rt.storage.keys.create_api_key(key.id, key.secret_hash, ["admin"], "micro")
    app = create_app(rt)
    rt.make_relay()
    tag = uuid.uuid4().hex[:8]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://h",
                                 headers={"Authorization": f"Bearer {key.token}"}) as api:
        await api.put(f"/v1/users/u{tag}", json={"email": "x@example.com"})
        async def one(i: int) -> None:
            r = await api.post("/v1/notifications/batch", json={"notifications": [
                {"idempotency_key": f"{tag}-{i}", "user_id": f"u{tag}", "title": "t", "body": "b", "channels": ["in_app"]}]})
            assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
        for i in range(50):
            await one(-1 - i)
        cpu, wall = time.process_time(), time.perf_counter()
        for i in range(N):
            await one(i)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"{N} requests: {cpu / N * 1e6:.0f} us CPU, {wall / N * 1e6:.0f} us wall per request")
    await rt.close()

asyncio.run(main())
