"""Run: PYTHONPATH=<git archive of a commit>/src HERALD_DATABASE_URL=postgresql://.../db .venv/bin/python docs/figures/2026-12-05-routed-mark.py 200 1
What the router's save costs PostgreSQL per notification (one in-app delivery each), in
batches of B: the server's CPU (every postgres process, from /proc) and the WAL it wrote
(pg_current_wal_lsn), with the client's CPU beside them. Run it on an otherwise idle server:
both figures are the whole server's. Before 0018 the save marked each notification routed;
from 0018 it locks the row FOR SHARE and writes no mark."""
import asyncio, os, sys, time, uuid
from pathlib import Path

import asyncpg

from herald.clock import SYSTEM_CLOCK
from herald.domain import Channel, Notification, Priority, User
from herald.router.planner import RoutingPlan, plan_routing
from herald.storage import open_storage
from herald.storage.records import NewNotification

N = int(sys.argv[1]) if len(sys.argv) > 1 else 200
B = int(sys.argv[2]) if len(sys.argv) > 2 else 1
TICK = os.sysconf("SC_CLK_TCK")


def postgres_cpu_s() -> float:
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        if name.startswith("postgres"):
            fields = text[text.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])
    return total / TICK


async def main() -> None:
    url = os.environ["HERALD_DATABASE_URL"]
    storage = open_storage(url, SYSTEM_CLOCK)
    await storage.database.migrate()
    tag = uuid.uuid4().hex[:8]
    await storage.directory.upsert_user(User(f"m{tag}", email=f"m{tag}@example.com"))
    items = [
        NewNotification(
            Notification(id=f"n{tag}{i}", user_id=f"m{tag}", category="default",
                         priority=Priority.NORMAL, title="t", body="b",
                         channels=(Channel.IN_APP,), send_at=None),
            f"k{tag}{i}", f"k{tag}{i}", {"title": "t", "body": "b"})
        for i in range(N * B + 2 * B)
    ]
    await storage.notifications.accept(items)
    batches = []
    for start in range(0, len(items), B):
        ids = [item.notification.id for item in items[start : start + B]]
        plan = RoutingPlan()
        for routing in await storage.routing.load(ids):
            plan.extend(plan_routing(routing, SYSTEM_CLOCK.now()))
        batches.append((ids, plan))
    for ids, plan in batches[:2]:
        await storage.routing.save(ids, plan.deliveries, plan.folds, plan.claims)
    lsn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    wal = await lsn.fetchval("SELECT pg_current_wal_lsn()")
    server, cpu = postgres_cpu_s(), time.process_time()
    for ids, plan in batches[2:]:
        await storage.routing.save(ids, plan.deliveries, plan.folds, plan.claims)
    cpu, server = time.process_time() - cpu, postgres_cpu_s() - server
    written = await lsn.fetchval("SELECT pg_current_wal_lsn() - $1::pg_lsn", wal)
    await lsn.close()
    n = N * B
    print(f"{N} saves of {B}: PostgreSQL {server / n * 1e6:.1f} us CPU and "
          f"{int(written) / n:.0f} B of WAL per notification; client {cpu / n * 1e6:.1f} us")
    await storage.database.close()

asyncio.run(main())
