"""Workflows: several steps for one trigger (send, delay, wait for an event), each step
optionally guarded by a condition on an earlier send's engagement or on an event.

Three parts, all plain code: the definition and its validation (`parse_workflow`, which
names the step at fault), and the rules that move a run on (`advance`), which the
scheduler's runner applies when the run is due, with the facts read at that moment."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, time, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from herald.domain.channels import Channel
from herald.domain.quiet_hours import next_occurrence, parse_wall_time

MAX_STEPS = 20
MAX_DELAY_SECONDS = 366 * 24 * 3600  # "delays over a year" are refused; a leap year is not
MAX_EVENT_NAME = 200
# What an `if` may ask about an earlier send step's deliveries.
ENGAGEMENT_FACTS = ("opened", "read", "clicked", "delivered")
_STEP_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_RUN_NAMESPACE = uuid.UUID("0b7f3f5e-71f4-4c0e-9a55-2f6d0d3b6a01")


class StepType(StrEnum):
    SEND = "send"
    DELAY = "delay"
    WAIT = "wait"


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class StepStatus(StrEnum):
    PENDING = "pending"
    WAITING = "waiting"
    DONE = "done"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class EngagementCondition:
    """Run only if none of `none_of` happened to `step`'s deliveries."""

    step: str
    none_of: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EventCondition:
    """Run only if the user posted (or did not post) `event` since the run began."""

    event: str
    received: bool


Condition = EngagementCondition | EventCondition


@dataclass(frozen=True, slots=True)
class Step:
    id: str
    type: StepType
    condition: Condition | None = None
    # send
    channels: tuple[Channel, ...] | None = None
    template: str | None = None
    # delay
    seconds: int | None = None
    until_local: time | None = None
    # wait
    event: str | None = None
    timeout_seconds: int | None = None


@dataclass(frozen=True, slots=True)
class Workflow:
    key: str
    category: str
    steps: tuple[Step, ...]


class WorkflowInvalid(ValueError):
    """A definition that does not validate; `field` names the step (steps[i] / its id)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def parse_workflow(key: str, raw: object) -> Workflow:
    """Validate a definition as the API receives it (any JSON) and build the workflow."""
    if not isinstance(raw, Mapping):
        raise WorkflowInvalid("body", "must be an object with 'steps'")
    unknown = set(raw) - {"category", "steps"}
    if unknown:
        raise WorkflowInvalid(sorted(unknown)[0], "unknown field")
    category = raw.get("category", "default")
    if not isinstance(category, str) or not 1 <= len(category) <= 128:
        raise WorkflowInvalid("category", "must be a name of 1 to 128 characters")
    steps = raw.get("steps")
    if not isinstance(steps, list) or not steps:
        raise WorkflowInvalid("steps", "must be a non-empty list")
    if len(steps) > MAX_STEPS:
        raise WorkflowInvalid("steps", f"at most {MAX_STEPS} steps, got {len(steps)}")
    parsed: list[Step] = []
    for index, step in enumerate(steps):
        parsed.append(_parse_step(index, step, parsed))
    return Workflow(key, category, tuple(parsed))


def _parse_step(index: int, raw: object, earlier: Sequence[Step]) -> Step:
    where = f"steps[{index}]"
    if not isinstance(raw, Mapping):
        raise WorkflowInvalid(where, "a step must be an object")
    step_id = raw.get("id")
    if not isinstance(step_id, str) or not _STEP_ID.match(step_id):
        raise WorkflowInvalid(f"{where}.id", "must be 1-64 letters, digits, '_', '-' or '.'")
    where = f"steps[{index}] ({step_id!r})"
    if any(s.id == step_id for s in earlier):
        raise WorkflowInvalid(where, f"step id {step_id!r} is used twice")
    kind = raw.get("type")
    if kind not in {t.value for t in StepType}:
        raise WorkflowInvalid(where, f"unknown step type {kind!r} (send, delay or wait)")
    allowed = {"id", "type", "if", *_FIELDS[StepType(str(kind))]}
    extra = set(raw) - allowed
    if extra:
        raise WorkflowInvalid(where, f"unknown field {sorted(extra)[0]!r} for a {kind} step")
    condition = _parse_condition(where, raw.get("if"), earlier) if "if" in raw else None
    step = Step(step_id, StepType(str(kind)), condition)
    if step.type == StepType.SEND:
        return _send(where, step, raw)
    if step.type == StepType.DELAY:
        return _delay(where, step, raw)
    return _wait(where, step, raw)


_FIELDS = {
    StepType.SEND: ("channels", "template"),
    StepType.DELAY: ("seconds", "until_local"),
    StepType.WAIT: ("event", "timeout_seconds"),
}


def _send(where: str, step: Step, raw: Mapping[str, Any]) -> Step:
    channels = raw.get("channels")
    parsed: tuple[Channel, ...] | None = None
    if channels is not None:
        known = {c.value for c in Channel}
        if (
            not isinstance(channels, list)
            or not channels
            or not all(isinstance(c, str) and c in known for c in channels)
        ):
            raise WorkflowInvalid(where, f"channels must be a non-empty list of {sorted(known)}")
        parsed = tuple(Channel(c) for c in dict.fromkeys(channels))
    template = raw.get("template")
    if template is not None and (not isinstance(template, str) or not 1 <= len(template) <= 128):
        raise WorkflowInvalid(where, "template must be a template name")
    return replace(step, channels=parsed, template=template)


def _delay(where: str, step: Step, raw: Mapping[str, Any]) -> Step:
    seconds, until = raw.get("seconds"), raw.get("until_local")
    if (seconds is None) == (until is None):
        raise WorkflowInvalid(where, "a delay takes either seconds or until_local")
    if until is not None:
        if not isinstance(until, str):
            raise WorkflowInvalid(where, "until_local must be 'HH:MM'")
        try:
            return replace(step, until_local=parse_wall_time(until))
        except ValueError as error:
            raise WorkflowInvalid(where, str(error)) from None
    return replace(step, seconds=_duration(where, "seconds", seconds))


def _wait(where: str, step: Step, raw: Mapping[str, Any]) -> Step:
    event = _event_name(where, raw.get("event"))
    timeout = _duration(where, "timeout_seconds", raw.get("timeout_seconds"))
    return replace(step, event=event, timeout_seconds=timeout)


def _duration(where: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise WorkflowInvalid(where, f"{name} must be a whole number of seconds, 0 or more")
    if value > MAX_DELAY_SECONDS:
        raise WorkflowInvalid(where, f"{name} may be at most a year ({MAX_DELAY_SECONDS} s)")
    return value


def _event_name(where: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise WorkflowInvalid(where, "event must be a non-empty name")
    if len(value) > MAX_EVENT_NAME:
        raise WorkflowInvalid(where, f"event name may be at most {MAX_EVENT_NAME} characters")
    return value


def _parse_condition(where: str, raw: object, earlier: Sequence[Step]) -> Condition:
    where = f"{where}.if"
    if not isinstance(raw, Mapping):
        raise WorkflowInvalid(where, "must be an object")
    if "step" in raw:
        if set(raw) - {"step", "not"}:
            raise WorkflowInvalid(where, "a step condition takes 'step' and 'not'")
        target = raw["step"]
        sends = {s.id for s in earlier if s.type == StepType.SEND}
        if target not in sends:
            raise WorkflowInvalid(
                where, f"condition on {target!r}, which is not an earlier send step"
            )
        facts = raw.get("not")
        if (
            not isinstance(facts, list)
            or not facts
            or not all(isinstance(f, str) and f in ENGAGEMENT_FACTS for f in facts)
        ):
            raise WorkflowInvalid(where, f"'not' must be a non-empty list of {ENGAGEMENT_FACTS}")
        return EngagementCondition(str(target), tuple(dict.fromkeys(facts)))
    if "event" in raw:
        if set(raw) - {"event", "received"}:
            raise WorkflowInvalid(where, "an event condition takes 'event' and 'received'")
        received = raw.get("received", True)
        if not isinstance(received, bool):
            raise WorkflowInvalid(where, "received must be true or false")
        return EventCondition(_event_name(where, raw["event"]), received)
    raise WorkflowInvalid(where, "a condition names a 'step' or an 'event'")


def workflow_to_json(workflow: Workflow) -> dict[str, Any]:
    """The definition as stored and shown (parse_workflow reads it back)."""
    return {"category": workflow.category, "steps": [_step_json(s) for s in workflow.steps]}


def _step_json(step: Step) -> dict[str, Any]:
    out: dict[str, Any] = {"id": step.id, "type": step.type.value}
    if isinstance(step.condition, EngagementCondition):
        out["if"] = {"step": step.condition.step, "not": list(step.condition.none_of)}
    elif isinstance(step.condition, EventCondition):
        out["if"] = {"event": step.condition.event, "received": step.condition.received}
    values = {
        "channels": [c.value for c in step.channels] if step.channels else None,
        "template": step.template,
        "seconds": step.seconds,
        "until_local": step.until_local.strftime("%H:%M") if step.until_local else None,
        "event": step.event,
        "timeout_seconds": step.timeout_seconds,
    }
    return out | {k: v for k, v in values.items() if v is not None}


# -- runs -----------------------------------------------------------------------------------


def step_notification_id(run_id: str, step_id: str) -> str:
    """Deterministic: a step done again after a crash writes the same notification."""
    return str(uuid.uuid5(_RUN_NAMESPACE, f"{run_id}\x1f{step_id}"))


def fanned_out_run_id(trigger_id: str, user_id: str) -> str:
    """Deterministic: a page of a topic trigger fanned out again makes the same runs."""
    return str(uuid.uuid5(_RUN_NAMESPACE, f"trigger\x1f{trigger_id}\x1f{user_id}"))


@dataclass(frozen=True, slots=True)
class StepProgress:
    """Where one step of a run stands."""

    status: StepStatus = StepStatus.PENDING
    started_at: datetime | None = None  # when a delay or wait began
    notification_id: str | None = None


@dataclass(frozen=True, slots=True)
class RunFacts:
    """What the conditions may ask, read when the run is due: per earlier send step, what
    happened to its deliveries (ENGAGEMENT_FACTS), and when the user posted each event."""

    engagement: Mapping[str, frozenset[str]] = field(default_factory=dict)
    events: Mapping[str, Sequence[datetime]] = field(default_factory=dict)

    def received(self, name: str, since: datetime) -> bool:
        return any(at >= since for at in self.events.get(name, ()))


@dataclass(frozen=True, slots=True)
class StepChange:
    step_id: str
    status: StepStatus
    at: datetime
    started_at: datetime | None = None
    notification_id: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Advance:
    """What a due run does now: its step changes, the sends to make (step ids), and
    where it then stands (next position, status, when it is next due, what it waits for)."""

    changes: tuple[StepChange, ...]
    position: int
    status: RunStatus
    due_at: datetime | None = None
    waiting_event: str | None = None

    @property
    def sends(self) -> tuple[StepChange, ...]:
        return tuple(c for c in self.changes if c.notification_id is not None)


def advance(
    run_id: str,
    workflow: Workflow,
    position: int,
    progress: Mapping[str, StepProgress],
    facts: RunFacts,
    *,
    now: datetime,
    zone: ZoneInfo,
    run_started_at: datetime,
) -> Advance:
    """Move a due run on from `position` as far as it goes now: instant steps (sends,
    skipped steps) are done in a row; a delay or wait starts (or ends) a timer."""
    changes: list[StepChange] = []
    while position < len(workflow.steps):
        step = workflow.steps[position]
        state = progress.get(step.id, StepProgress())
        if state.status == StepStatus.WAITING:
            finished = _timer_end(step, state, facts, now)
            if finished is None:  # woken for an event it was not waiting for
                return Advance(tuple(changes), position, RunStatus.RUNNING, *_timer(step, state))
            changes.append(StepChange(step.id, StepStatus.DONE, now, detail=finished))
            position += 1
            continue
        if not condition_holds(step.condition, facts, run_started_at):
            changes.append(StepChange(step.id, StepStatus.SKIPPED, now, detail=_why(step)))
            position += 1
            continue
        if step.type == StepType.SEND:
            notification = step_notification_id(run_id, step.id)
            changes.append(StepChange(step.id, StepStatus.DONE, now, notification_id=notification))
            position += 1
            continue
        due = timer_due(step, now, zone)
        started = StepProgress(StepStatus.WAITING, started_at=now)
        changes.append(StepChange(step.id, StepStatus.WAITING, now, started_at=now))
        if due <= now and step.type == StepType.DELAY:  # a zero delay: on at once
            changes.append(StepChange(step.id, StepStatus.DONE, now))
            position += 1
            continue
        return Advance(tuple(changes), position, RunStatus.RUNNING, *_timer(step, started, due))
    return Advance(tuple(changes), position, RunStatus.COMPLETED)


def condition_holds(condition: Condition | None, facts: RunFacts, since: datetime) -> bool:
    if condition is None:
        return True
    if isinstance(condition, EngagementCondition):
        happened = facts.engagement.get(condition.step, frozenset())
        return not happened.intersection(condition.none_of)
    return facts.received(condition.event, since) == condition.received


def timer_due(step: Step, now: datetime, zone: ZoneInfo) -> datetime:
    """When a delay or wait that starts now ends (a wait: its timeout). until_local is the
    next occurrence of that wall time in the user's zone (DST-safe)."""
    if step.until_local is not None:
        return next_occurrence(step.until_local, zone, now)
    seconds = step.seconds if step.type == StepType.DELAY else step.timeout_seconds
    return now + timedelta(seconds=seconds or 0)


def _timer(
    step: Step, state: StepProgress, due: datetime | None = None
) -> tuple[datetime | None, str | None]:
    """When the run is next due and what it waits for, for a step that has started."""
    if due is None and state.started_at is not None:
        due = state.started_at + timedelta(seconds=step.timeout_seconds or 0)
    return due, step.event if step.type == StepType.WAIT else None


def _timer_end(
    step: Step, state: StepProgress, facts: RunFacts, now: datetime
) -> dict[str, Any] | None:
    """A waiting step that is due ends (its detail), or None: it waits on. A delay is due
    only when it ends; a wait also when an event wakes it."""
    if step.type == StepType.DELAY:
        return {}
    assert step.event is not None
    started = state.started_at or now
    if facts.received(step.event, started):
        return {"event": step.event, "received": True}
    if started + timedelta(seconds=step.timeout_seconds or 0) <= now:
        return {"event": step.event, "received": False, "timed_out": True}
    return None


def _why(step: Step) -> dict[str, Any]:
    condition = step.condition
    if isinstance(condition, EngagementCondition):
        return {"reason": f"{condition.step} was {'/'.join(condition.none_of)}"}
    assert condition is not None
    said = "received" if condition.received else "not received"
    return {"reason": f"condition failed: event {condition.event} {said}"}
