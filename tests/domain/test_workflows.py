"""Workflow definitions (validation names the step) and the rules that move a run on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from herald.domain.workflows import (
    RunFacts,
    RunStatus,
    StepProgress,
    StepStatus,
    WorkflowInvalid,
    advance,
    parse_workflow,
    step_notification_id,
    workflow_to_json,
)

NOW = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)
BERLIN = ZoneInfo("Europe/Berlin")
SEND = {"id": "push", "type": "send", "channels": ["push"]}


def steps(*items: dict[str, Any]) -> dict[str, Any]:
    return {"steps": list(items)}


@pytest.mark.parametrize(
    ("definition", "field", "words"),
    [
        (steps({"id": "a", "type": "fax"}), "steps[0] ('a')", "unknown step type"),
        (
            steps(SEND, {"id": "b", "type": "send", "if": {"step": "later", "not": ["opened"]}}),
            "steps[1] ('b').if",
            "not an earlier send step",
        ),
        (
            steps({"id": "b", "type": "send", "if": {"step": "b", "not": ["opened"]}}),
            "steps[0] ('b').if",
            "not an earlier send step",
        ),
        (
            steps(SEND, {"id": "d", "type": "delay", "seconds": 366 * 86400 + 1}),
            "steps[1] ('d')",
            "at most a year",
        ),
        (steps({"id": "d", "type": "delay"}), "steps[0] ('d')", "either seconds or until_local"),
        (
            steps({"id": "d", "type": "delay", "until_local": "25:00"}),
            "steps[0] ('d')",
            "between 00:00 and 23:59",
        ),
        (
            steps({"id": "w", "type": "wait", "event": "x" * 201, "timeout_seconds": 5}),
            "steps[0] ('w')",
            "at most 200",
        ),
        (steps(*[{"id": f"s{n}", "type": "send"} for n in range(21)]), "steps", "at most 20"),
        (steps(SEND, SEND), "steps[1] ('push')", "used twice"),
        (steps({"id": "p", "type": "send", "seconds": 3}), "steps[0] ('p')", "unknown field"),
        (steps({"id": "p", "type": "send", "channels": ["fax"]}), "steps[0] ('p')", "channels"),
        ({"steps": []}, "steps", "non-empty"),
        ([], "body", "object"),
        (steps("push"), "steps[0]", "object"),
        (steps({"type": "send"}), "steps[0].id", "letters"),
    ],
)
def test_an_invalid_definition_names_the_step(definition: Any, field: str, words: str) -> None:
    with pytest.raises(WorkflowInvalid) as raised:
        parse_workflow("w", definition)
    assert raised.value.field == field
    assert words in raised.value.message


def test_a_definition_round_trips() -> None:
    definition = steps(
        SEND,
        {"id": "pause", "type": "delay", "until_local": "09:00"},
        {"id": "wait", "type": "wait", "event": "paid", "timeout_seconds": 60},
        {"id": "email", "type": "send", "if": {"step": "push", "not": ["opened", "read"]}},
        {"id": "sms", "type": "send", "if": {"event": "paid", "received": False}},
    )
    workflow = parse_workflow("w", definition)
    assert workflow_to_json(workflow) == {"category": "default", **definition}
    assert parse_workflow("w", workflow_to_json(workflow)) == workflow


ESCALATION = parse_workflow(
    "w",
    steps(
        SEND,
        {"id": "pause", "type": "delay", "seconds": 3600},
        {"id": "email", "type": "send", "if": {"step": "push", "not": ["opened"]}},
    ),
)


def test_a_run_goes_as_far_as_its_first_timer() -> None:
    moved = advance("r", ESCALATION, 0, {}, RunFacts(), now=NOW, zone=BERLIN, run_started_at=NOW)
    assert [(c.step_id, c.status) for c in moved.changes] == [
        ("push", StepStatus.DONE),
        ("pause", StepStatus.WAITING),
    ]
    assert moved.sends[0].notification_id == step_notification_id("r", "push")
    assert (moved.position, moved.status, moved.due_at) == (
        1,
        RunStatus.RUNNING,
        NOW + timedelta(hours=1),
    )


@pytest.mark.parametrize(("happened", "email"), [(set(), "done"), ({"opened"}, "skipped")])
def test_the_condition_is_evaluated_when_the_step_is_due(happened: set[str], email: str) -> None:
    later = NOW + timedelta(hours=1)
    progress = {"pause": StepProgress(StepStatus.WAITING, started_at=NOW)}
    facts = RunFacts(engagement={"push": frozenset(happened)})
    moved = advance("r", ESCALATION, 1, progress, facts, now=later, zone=BERLIN, run_started_at=NOW)
    assert [(c.step_id, c.status.value) for c in moved.changes] == [
        ("pause", "done"),
        ("email", email),
    ]
    assert moved.status == RunStatus.COMPLETED


def test_until_local_is_the_next_wall_time_in_the_users_zone_across_dst() -> None:
    workflow = parse_workflow("w", steps({"id": "d", "type": "delay", "until_local": "09:00"}))
    # Europe/Berlin springs forward on 2026-03-29: 09:00 is 07:00 UTC that day, not 08:00.
    moved = advance("r", workflow, 0, {}, RunFacts(), now=NOW, zone=BERLIN, run_started_at=NOW)
    assert moved.due_at == datetime(2026, 3, 29, 7, 0, tzinfo=UTC)


def test_a_wait_woken_early_keeps_its_timeout() -> None:
    workflow = parse_workflow(
        "w", steps({"id": "w", "type": "wait", "event": "paid", "timeout_seconds": 600})
    )
    progress = {"w": StepProgress(StepStatus.WAITING, started_at=NOW)}
    early = NOW + timedelta(seconds=10)
    stale = RunFacts(events={"paid": [NOW - timedelta(seconds=1)]})  # before the wait began
    moved = advance("r", workflow, 0, progress, stale, now=early, zone=BERLIN, run_started_at=NOW)
    assert (moved.changes, moved.due_at, moved.waiting_event) == (
        (),
        NOW + timedelta(seconds=600),
        "paid",
    )
