"""The router role: notifications in, deliveries out.

For a batch from `herald.notifications`: load each notification with its user,
preferences, devices, category and template; plan the deliveries; write them (ON CONFLICT
DO NOTHING: the ids are deterministic), folding digests and counting frequency caps in the
same transaction; publish the queued ones to their channel topics; then commit. A crash
anywhere before the commit replays the batch, which writes nothing new and republishes
what is still queued.

The write is conditional: only notifications still to route in that statement (accepted,
no delivery yet) get deliveries, their rows locked in id order as a cancel locks them, so a
cancel that commits after the read is never overwritten. The deliveries are what says a
notification was routed; one planned none is marked `routed`. A notification that cannot be
routed at all (its batch raised, and it raises alone) is set aside by the consume loop:
`failed`, with the reason in its delivery log and on the dead-letter topic.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence

import structlog

from herald.bus.interface import LANES, Bus, Lane, Message, notifications_topic
from herald.bus.messages import delivery_record, ids_in
from herald.clock import Clock
from herald.metrics import METRICS
from herald.roles import PRIORITY_BATCH_SIZE, consume_loop
from herald.router.fanout import BroadcastFanout
from herald.router.planner import NO_EXTRAS, EmailExtras, RoutingPlan, plan_routing
from herald.storage.broadcasts import BroadcastRepository
from herald.storage.routing import RoutingRepository
from herald.storage.workflows import WorkflowRepository
from herald.wakeups import Wake

log = structlog.get_logger()


class Router:
    group = "herald.router"

    def __init__(
        self,
        routing: RoutingRepository,
        broadcasts: BroadcastRepository,
        bus: Bus,
        clock: Clock,
        email: EmailExtras = NO_EXTRAS,
        on_outbox: Wake | None = None,
        workflows: WorkflowRepository | None = None,
    ) -> None:
        self.workflows = workflows  # a topic trigger's fan-out writes runs
        self.routing = routing
        self.broadcasts = broadcasts
        self.bus = bus
        self.clock = clock
        self.email = email
        self.on_outbox = on_outbox

    async def handle(self, messages: Sequence[Message]) -> None:
        await self.route(ids_in(messages, "notification_id"))

    async def set_aside(self, message: Message, reason: str) -> None:
        """A notification that cannot be routed: failed, with the reason in its log."""
        notification_ids = ids_in([message], "notification_id")
        await self.routing.set_aside(notification_ids, f"could not be routed: {reason}")
        log.error("notification set aside", notification_ids=notification_ids, reason=reason)

    async def route(self, notification_ids: Sequence[str]) -> None:
        if not notification_ids:
            return
        now = self.clock.now()
        inputs = await self.routing.load(notification_ids)
        plan = RoutingPlan()
        for routing in inputs:
            plan.extend(plan_routing(routing, now, self.email))
        # The whole batch, not only what was still to route: one handed out again after a
        # crash between the routing commit and the publish publishes what it had written.
        queued = await self.routing.save(notification_ids, plan.deliveries, plan.folds, plan.claims)
        await self.bus.publish(
            [delivery_record(r.delivery_id, r.user_id, r.channel, r.priority) for r in queued]
        )
        METRICS.routed.inc(len(inputs))
        # Counted once per channel and state, not per delivery: a labelled counter's lookup
        # and lock cost more than the planning of a small delivery.
        planned = Counter((d.channel.value, d.state.value) for d in plan.deliveries)
        for (channel, state), count in planned.items():
            METRICS.planned.labels(channel, state).inc(count)

    async def run(self, stop: asyncio.Event, lanes: Sequence[Lane] = LANES) -> None:
        """Route notifications, and (with the bulk lane) fan broadcasts out into
        notifications. A router given only the priority lane is a dedicated one for urgent
        traffic: no broadcast work lands on it."""
        async with asyncio.TaskGroup() as group:
            for lane in lanes:
                group.create_task(
                    consume_loop(
                        self.bus,
                        [notifications_topic(lane)],
                        f"{self.group}.{lane}",
                        self.handle,
                        stop,
                        batch_size=500 if lane == Lane.BULK else PRIORITY_BATCH_SIZE,
                        name=f"router.{lane}",
                        set_aside=self.set_aside,
                    )
                )
            if Lane.BULK in lanes:
                group.create_task(
                    BroadcastFanout(
                        self.broadcasts,
                        self.bus,
                        on_outbox=self.on_outbox,
                        workflows=self.workflows,
                    ).run(stop)
                )
