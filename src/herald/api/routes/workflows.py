"""Workflows: definitions, triggers (idempotent like notifications), runs with their steps,
cancellation by key, and the events runs wait for."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Response

from herald.api.deps import Caller, RuntimeDep, require
from herald.api.errors import ApiError, not_found
from herald.api.openapi import errors, updated
from herald.api.responses import (
    EventAcceptedOut,
    ListOut,
    RunsCancelledOut,
    TriggeredOut,
    WorkflowOut,
    WorkflowRunOut,
)
from herald.api.routing import HeraldRoute
from herald.api.schemas import EventIn, Name, WorkflowCancelIn, WorkflowTriggerIn
from herald.domain.workflows import (
    Workflow,
    WorkflowInvalid,
    fanned_out_run_id,
    parse_workflow,
    workflow_to_json,
)
from herald.router.fanout import page_record, trigger_template
from herald.runtime import Runtime
from herald.storage import new_id
from herald.storage.workflows import NewRun, RunView
from herald.util import canonical_hash

router = APIRouter(prefix="/v1", tags=["workflows"], route_class=HeraldRoute)
IdempotencyKey = Annotated[
    str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)
]


def _workflow_json(workflow: Workflow) -> dict[str, Any]:
    return {"key": workflow.key, **workflow_to_json(workflow)}


@router.put(
    "/workflows/{key}",
    status_code=201,
    response_model=WorkflowOut,
    responses=updated(WorkflowOut),
    dependencies=[require("manage")],
)
async def put_workflow(
    key: Name, rt: RuntimeDep, response: Response, body: Annotated[Any, Body()]
) -> dict[str, Any]:
    """Steps run in order; an invalid definition is a 422 that names the step."""
    try:
        workflow = parse_workflow(key, body)
    except WorkflowInvalid as invalid:
        raise ApiError(
            422,
            "invalid_workflow",
            str(invalid),
            [{"field": invalid.field, "message": invalid.message}],
        ) from None
    created = await rt.storage.workflows.put(workflow)
    response.status_code = 201 if created else 200
    return _workflow_json(workflow)


@router.get("/workflows/{key}", response_model=WorkflowOut, dependencies=[require("read")])
async def get_workflow(key: Name, rt: RuntimeDep) -> dict[str, Any]:
    workflow = await rt.storage.workflows.get(key)
    if workflow is None:
        raise not_found("workflow")
    return _workflow_json(workflow)


@router.delete("/workflows/{key}", status_code=204, dependencies=[require("manage")])
async def delete_workflow(key: Name, rt: RuntimeDep) -> Response:
    """Runs already triggered go on with the definition they started with."""
    if not await rt.storage.workflows.delete(key):
        raise not_found("workflow")
    return Response(status_code=204)


@router.get("/workflows", response_model=ListOut[WorkflowOut], dependencies=[require("read")])
async def list_workflows(rt: RuntimeDep) -> dict[str, Any]:
    return {
        "items": [_workflow_json(w) for w in await rt.storage.workflows.all()],
        "next_cursor": None,
    }


@router.post(
    "/workflows/{key}/trigger",
    status_code=202,
    response_model=TriggeredOut,
    response_model_exclude_none=True,
    responses={
        **updated(TriggeredOut, "the same Idempotency-Key and body again"),
        **errors(409),
    },
)
async def trigger(
    key: Name,
    body: WorkflowTriggerIn,
    rt: RuntimeDep,
    response: Response,
    caller: Annotated[Caller, require("send")],
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    """One run per user: a `user_id`'s is written at once; a list's (up to 1,000) and a
    `topic`'s are made by the broadcast fan-out, a page at a time. The same
    Idempotency-Key and body again: 200 with the same ids; another body: 409."""
    workflow = await rt.storage.workflows.get(key)
    if workflow is None:
        raise not_found("workflow")
    assert rt.limits is not None
    if body.topic is None:
        rt.limits.check_notifications(caller.key_id, len(body.recipients))
        await _check_users(rt, body.recipients)
    if body.user_id is not None:
        return await _trigger_one(workflow, body, rt, response, caller, idempotency_key)
    return await _trigger_fanned_out(workflow, body, rt, response, caller, idempotency_key)


async def _check_users(rt: Runtime, users: list[str]) -> None:
    known = await rt.storage.directory.existing_user_ids(users)
    missing = [u for u in users if u not in known]
    if missing:
        raise ApiError(
            422,
            "unknown_user",
            f"user {missing[0]!r} does not exist; PUT /v1/users/{{id}} first",
            [{"field": "user_ids", "message": f"unknown: {', '.join(missing[:10])}"}],
        )


def _conflict() -> ApiError:
    return ApiError(409, "idempotency_conflict", "this Idempotency-Key was used with another body")


async def _trigger_one(
    workflow: Workflow,
    body: WorkflowTriggerIn,
    rt: Runtime,
    response: Response,
    caller: Caller,
    idempotency_key: str | None,
) -> dict[str, Any]:
    """One user: the run is written in the request, and can be read at once."""
    assert body.user_id is not None
    run_id = new_id()
    [result] = await rt.storage.workflows.trigger(
        [
            NewRun(
                id=run_id,
                workflow=workflow,
                user_id=body.user_id,
                # Without a key each run has its own, so no replay is ever matched.
                idempotency_key=idempotency_key or f"auto:{run_id}",
                request_hash=_request_hash(workflow, body),
                input=_given(body),
                api_key_id=caller.key_id or "",
                cancellation_key=body.cancellation_key,
            )
        ]
    )
    if result.conflict:
        raise _conflict()
    response.status_code = 202 if result.created else 200
    return {"id": result.id, "status": "accepted"}


def _given(body: WorkflowTriggerIn) -> dict[str, Any]:
    """What each run's sends take from the trigger."""
    return body.model_dump(
        mode="json", exclude={"user_id", "user_ids", "topic", "cancellation_key"}
    )


def _request_hash(workflow: Workflow, body: WorkflowTriggerIn) -> str:
    return canonical_hash({"workflow": workflow.key, **body.model_dump(mode="json")})


async def _trigger_fanned_out(
    workflow: Workflow,
    body: WorkflowTriggerIn,
    rt: Runtime,
    response: Response,
    caller: Caller,
    idempotency_key: str | None,
) -> dict[str, Any]:
    """A list of users or a topic: a broadcast whose pages are runs. The request writes the
    trigger, its audience (a list's user ids: far cheaper than their runs and steps, see
    docs/benchmarks.md) and its first page message; the router's fan-out makes one run per
    user, a page at a time. A list's run ids are known at once (deterministic per trigger
    and user) and answered in the list's order; each run exists once its page is done."""
    trigger_id = new_id()
    record = page_record(trigger_id, None)
    users = None if body.topic is not None else body.recipients
    found, created, conflict = await rt.storage.broadcasts.create_broadcast(
        broadcast_id=trigger_id,
        # Its own namespace: a broadcast's key is not a trigger's.
        idempotency_key=f"workflow:{workflow.key}:{idempotency_key or f'auto:{trigger_id}'}",
        request_hash=_request_hash(workflow, body),
        api_key_id=caller.key_id or "",
        topic=body.topic,
        user_ids=users,
        template=trigger_template(workflow, _given(body), body.cancellation_key),
        first_page=(record.topic, record.key, record.value),
    )
    if conflict:
        raise _conflict()
    if created:
        rt.wake_relay()
    response.status_code = 202 if created else 200
    if users is not None:
        ids = [fanned_out_run_id(found, user) for user in users]
        return {"ids": ids, "trigger_id": found, "status": "accepted"}
    broadcast = await rt.storage.broadcasts.get_broadcast(found)
    assert broadcast is not None
    return {"trigger_id": found, "status": "accepted", "planned": broadcast["planned"]}


@router.get(
    "/workflow-runs/{run_id}", response_model=WorkflowRunOut, dependencies=[require("read")]
)
async def get_run(run_id: str, rt: RuntimeDep) -> dict[str, Any]:
    run = await rt.storage.workflows.run(run_id)
    if run is None:
        raise not_found("workflow run")
    return _run_json(run)


def _run_json(run: RunView) -> dict[str, Any]:
    return {
        "id": run.id,
        "workflow": run.workflow_key,
        "user_id": run.user_id,
        "status": run.status.value,
        "cancellation_key": run.cancellation_key,
        "waiting_for": run.waiting_event,
        "due_at": run.due_at,
        "created_at": run.created_at,
        "steps": [
            {
                "id": s.step_id,
                "type": s.type,
                "status": s.status.value,
                "notification_id": s.notification_id,
                "at": s.at,
                **({"detail": s.detail} if s.detail else {}),
            }
            for s in run.steps
        ],
    }


@router.post(
    "/workflow-runs/cancel", response_model=RunsCancelledOut, dependencies=[require("send")]
)
async def cancel_runs(body: WorkflowCancelIn, rt: RuntimeDep) -> dict[str, int]:
    """Stops the runs with this key (of one user, or all of them): nothing more is sent
    for them, and what their sends made but has not gone out yet is cancelled too."""
    cancelled = await rt.storage.workflows.cancel(body.cancellation_key, body.user_id)
    if cancelled.notification_ids:
        await rt.storage.notifications.cancel(cancelled.notification_ids)
    return {"cancelled": cancelled.runs}


@router.post(
    "/events",
    status_code=202,
    response_model=EventAcceptedOut,
    responses=errors(404),
    dependencies=[require("send")],
)
async def post_event(body: EventIn, rt: RuntimeDep) -> dict[str, Any]:
    """Resumes the user's runs waiting for this event (and counts for `if` conditions)."""
    if not await rt.storage.directory.existing_user_ids([body.user_id]):
        raise not_found("user")
    woken = await rt.storage.workflows.post_event(body.user_id, body.name, body.data)
    return {"status": "accepted", "resumed": woken}
