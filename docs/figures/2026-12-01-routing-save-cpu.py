"""Run: PYTHONPATH=<git archive of a commit>/src HERALD_DATABASE_URL=postgresql://.../db .venv/bin/python docs/figures/2026-12-01-routing-save-cpu.py 400
Client CPU of RoutingRepository.save for one-notification batches (PostgreSQL)."""
import asyncio, os, sys, time, uuid
from herald.clock import SYSTEM_CLOCK
from herald.domain import User
from herald.router.planner import RoutingPlan, plan_routing
from herald.storage import open_storage
from herald.storage.records import NewNotification
from herald.domain import Notification, Priority, Channel

N = int(sys.argv[1]) if len(sys.argv) > 1 else 400

async def main() -> None:
    storage = open_storage(os.environ["HERALD_DATABASE_URL"], SYSTEM_CLOCK)
    await storage.database.migrate()
    tag = uuid.uuid4().hex[:8]
    await storage.directory.upsert_user(User(f"m{tag}", email=f"m{tag}@example.com"))
    items = [
        NewNotification(
            Notification(id=f"n{tag}{i}", user_id=f"m{tag}", category="default", priority=Priority.NORMAL,
                         title="t", body="b", channels=(Channel.IN_APP,), send_at=None),
            f"k{tag}{i}", f"k{tag}{i}", {"title": "t", "body": "b"})
        for i in range(N + 20)
    ]
    await storage.notifications.accept(items)
    plans = []
    for item in items:
        plan = RoutingPlan()
        for routing in await storage.routing.load([item.notification.id]):
            plan.extend(plan_routing(routing, SYSTEM_CLOCK.now()))
        plans.append((item.notification.id, plan))
    for nid, plan in plans[:20]:  # warm up: prepared statements, caches
        await storage.routing.save([nid], plan.deliveries, plan.folds, plan.claims)
    cpu, wall = time.process_time(), time.perf_counter()
    for nid, plan in plans[20:]:
        await storage.routing.save([nid], plan.deliveries, plan.folds, plan.claims)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"{N} saves: {cpu / N * 1e6:.0f} us CPU, {wall / N * 1e6:.0f} us wall per save")
    await storage.database.close()

asyncio.run(main())
