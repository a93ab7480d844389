"""Run: PYTHONPATH=<git archive of a commit>/src HERALD_DATABASE_URL=postgresql://.../db .venv/bin/python docs/figures/2026-12-04-routing-batch-save.py 100 50 [generic|per_execution]
Client CPU and wall of RoutingRepository.save for batches of B notifications (PostgreSQL),
with the plan mode of the role processes (generic) or of the API (per_execution)."""
import asyncio, os, sys, time, uuid
from herald.clock import SYSTEM_CLOCK
from herald.domain import User
from herald.router.planner import RoutingPlan, plan_routing
from herald.storage import open_storage
from herald.storage.records import NewNotification
from herald.domain import Notification, Priority, Channel

N = int(sys.argv[1]) if len(sys.argv) > 1 else 400
B = int(sys.argv[2]) if len(sys.argv) > 2 else 50
MODE = sys.argv[3] if len(sys.argv) > 3 else "generic"

async def main() -> None:
    from herald.storage.dialect import PlanMode
    storage = open_storage(os.environ["HERALD_DATABASE_URL"], SYSTEM_CLOCK, plans=PlanMode(MODE))
    await storage.database.migrate()
    tag = uuid.uuid4().hex[:8]
    await storage.directory.upsert_user(User(f"m{tag}", email=f"m{tag}@example.com"))
    items = [
        NewNotification(
            Notification(id=f"n{tag}{i}", user_id=f"m{tag}", category="default", priority=Priority.NORMAL,
                         title="t", body="b", channels=(Channel.IN_APP,), send_at=None),
            f"k{tag}{i}", f"k{tag}{i}", {"title": "t", "body": "b"})
        for i in range(N * B + 2 * B)
    ]
    await storage.notifications.accept(items)
    plans = []
    for item in items:
        plan = RoutingPlan()
        for routing in await storage.routing.load([item.notification.id]):
            plan.extend(plan_routing(routing, SYSTEM_CLOCK.now()))
        plans.append((item.notification.id, plan))
    batches = []
    for start in range(0, len(plans), B):
        chunk = plans[start:start + B]
        merged = RoutingPlan()
        for _, plan in chunk:
            merged.deliveries += plan.deliveries
        batches.append(([nid for nid, _ in chunk], merged))
    for ids, plan in batches[:2]:
        await storage.routing.save(ids, plan.deliveries, plan.folds, plan.claims)
    cpu, wall = time.process_time(), time.perf_counter()
    for ids, plan in batches[2:]:
        await storage.routing.save(ids, plan.deliveries, plan.folds, plan.claims)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    n = len(batches) - 2
    print(f"{n} saves of {B}: {cpu / n * 1e6:.0f} us CPU, {wall / n * 1e6:.0f} us wall per save")
    await storage.database.close()

asyncio.run(main())
