"""State, on SQLite (embedded) or PostgreSQL (production).

One `Database` (engine, dialect, transactions, migrations) and small repositories over it,
each shaped by the role that uses it; a role is handed only its own:

| repository | used by | module |
| --- | --- | --- |
| `keys` | API authentication, first start | keys.py |
| `directory` | API: users, preferences, devices, templates, categories | directory.py |
| `suppressions` | API: the suppression list | suppressions.py |
| `feedback` | API: provider webhooks | feedback.py |
| `notifications` | API: accept, read, cancel | notifications.py |
| `broadcasts` | API and the router's broadcast fan-out | broadcasts.py |
| `shaping` | API: caps and digests | shaping.py |
| `inbox` | API and the in-app provider | inbox.py |
| `sandbox` | API and the sandbox provider | sandbox.py |
| `outbox` | relay | outbox.py |
| `routing` | router | routing.py |
| `deliveries` | workers: the claim, outcomes, dead targets | deliveries.py |
| `scheduling` | scheduler | scheduling.py |
| `operations` | metrics and `herald status`: the backlog | operations.py |
| `engagement` | API: engagement reports, tracking | engagement.py |
| `workflows` | API: workflow definitions, triggers, runs, events | workflows.py |
| `workflow_timers` | scheduler: due workflow runs, each step once | workflow_timers.py |
| `activity` | API and console: lists, searches, dead letters and their replay | activity.py |

What differs between the two databases lives in `dialect.py`; the hot statements (the
claim, outcomes, the router's reads and its save, the accept's user check, the scheduler's
probe) run on the driver itself, in `native.py`; row <-> domain mapping is in `rows.py`;
the state guards of the SQL in `guards.py`, built from the domain's state machine."""

from __future__ import annotations

from dataclasses import dataclass

from herald.clock import SYSTEM_CLOCK, Clock
from herald.storage.activity import ActivityRepository
from herald.storage.addresses import AddressRepository
from herald.storage.broadcasts import BroadcastRepository
from herald.storage.database import Database
from herald.storage.deliveries import DeliveryRepository
from herald.storage.dialect import PlanMode
from herald.storage.directory import DirectoryRepository
from herald.storage.engagement import EngagementRepository
from herald.storage.feedback import FeedbackRepository
from herald.storage.inbox import InboxRepository
from herald.storage.keys import KeyRepository
from herald.storage.notifications import NotificationRepository
from herald.storage.operations import OperationsRepository
from herald.storage.outbox import OutboxRepository
from herald.storage.records import (
    AcceptResult,
    ApiKeyRecord,
    DeliveryUpdate,
    InboxItem,
    NewNotification,
    Page,
    ProviderReport,
    Released,
    RoutingInput,
    SandboxMessage,
    Suppression,
)
from herald.storage.routing import RoutingRepository
from herald.storage.rows import InvalidCursor, new_id
from herald.storage.sandbox import SandboxRepository
from herald.storage.scheduling import SchedulingRepository
from herald.storage.shaping import ShapingRepository
from herald.storage.suppressions import SuppressionRepository
from herald.storage.workflow_timers import WorkflowTimerRepository
from herald.storage.workflows import WorkflowRepository


@dataclass(frozen=True)
class Storage:
    """Every repository over one database: what the runtime wires roles from."""

    database: Database
    keys: KeyRepository
    directory: DirectoryRepository
    addresses: AddressRepository
    suppressions: SuppressionRepository
    feedback: FeedbackRepository
    notifications: NotificationRepository
    broadcasts: BroadcastRepository
    shaping: ShapingRepository
    inbox: InboxRepository
    sandbox: SandboxRepository
    outbox: OutboxRepository
    routing: RoutingRepository
    deliveries: DeliveryRepository
    scheduling: SchedulingRepository
    operations: OperationsRepository
    engagement: EngagementRepository
    workflows: WorkflowRepository
    workflow_timers: WorkflowTimerRepository
    activity: ActivityRepository

    @classmethod
    def over(cls, database: Database) -> Storage:
        return cls(
            database=database,
            keys=KeyRepository(database),
            directory=DirectoryRepository(database),
            addresses=AddressRepository(database),
            suppressions=SuppressionRepository(database),
            feedback=FeedbackRepository(database),
            notifications=NotificationRepository(database),
            broadcasts=BroadcastRepository(database),
            shaping=ShapingRepository(database),
            inbox=InboxRepository(database),
            sandbox=SandboxRepository(database),
            outbox=OutboxRepository(database),
            routing=RoutingRepository(database),
            deliveries=DeliveryRepository(database),
            scheduling=SchedulingRepository(database),
            operations=OperationsRepository(database),
            engagement=EngagementRepository(database),
            workflows=WorkflowRepository(database),
            workflow_timers=WorkflowTimerRepository(database),
            activity=ActivityRepository(database),
        )


def open_storage(
    url: str,
    clock: Clock = SYSTEM_CLOCK,
    *,
    retention_days: int = 30,
    plans: PlanMode = PlanMode.PER_EXECUTION,
) -> Storage:
    """The storage at a database URL: sqlite:///path or postgresql://user:pw@host/db."""
    return Storage.over(Database.open(url, clock, retention_days=retention_days, plans=plans))


__all__ = [
    "AcceptResult",
    "ApiKeyRecord",
    "Database",
    "DeliveryUpdate",
    "InboxItem",
    "InvalidCursor",
    "NewNotification",
    "Page",
    "PlanMode",
    "ProviderReport",
    "Released",
    "RoutingInput",
    "SandboxMessage",
    "Storage",
    "Suppression",
    "new_id",
    "open_storage",
]
