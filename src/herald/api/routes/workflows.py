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
from herald.domain.workflows import Workflow, WorkflowInvalid, parse_workflow, workflow_to_json
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
    """One run per user (up to 1,000). The same Idempotency-Key and body again: 200 with
    the same ids; another body: 409."""
    workflow = await rt.storage.workflows.get(key)
    if workflow is None:
        raise not_found("workflow")
    if body.topic is not None:
        return await _trigger_topic(workflow, body, rt, response, caller, idempotency_key)
    users = body.recipients
    assert rt.limits is not None
    rt.limits.check_notifications(caller.key_id, len(users))
    known = await rt.storage.directory.existing_user_ids(users)
    missing = [u for u in users if u not in known]
    if missing:
        raise ApiError(
            422,
            "unknown_user",
            f"user {missing[0]!r} does not exist; PUT /v1/users/{{id}} first",
            [{"field": "user_ids", "message": f"unknown: {', '.join(missing[:10])}"}],
        )
    given = body.model_dump(mode="json", exclude={"user_id", "user_ids", "cancellation_key"})
    request_hash = canonical_hash({"workflow": key, **body.model_dump(mode="json")})
    ids = [new_id() for _ in users]
    runs = [
        NewRun(
            id=run_id,
            workflow=workflow,
            user_id=user,
            # Without a key each run has its own, so no replay is ever matched.
            idempotency_key=idempotency_key or f"auto:{run_id}",
            request_hash=request_hash,
            input=given,
            api_key_id=caller.key_id or "",
            cancellation_key=body.cancellation_key,
        )
        for run_id, user in zip(ids, users, strict=True)
    ]
    results = await rt.storage.workflows.trigger(runs)
    if any(r.conflict for r in results):
        raise ApiError(
            409, "idempotency_conflict", "this Idempotency-Key was used with another body"
        )
    response.status_code = 202 if any(r.created for r in results) else 200
    ids = [r.id for r in results]
    if body.user_id is not None:
        return {"id": ids[0], "status": "accepted"}
    return {"ids": ids, "status": "accepted"}


async def _trigger_topic(
    workflow: Workflow,
    body: WorkflowTriggerIn,
    rt: Runtime,
    response: Response,
    caller: Caller,
    idempotency_key: str | None,
) -> dict[str, Any]:
    """A broadcast whose pages are runs: the request writes the trigger and its first page
    message; the router's fan-out makes one run per subscriber, a page at a time."""
    given = body.model_dump(mode="json", exclude={"topic", "cancellation_key"}, exclude_none=True)
    request_hash = canonical_hash({"workflow": workflow.key, **body.model_dump(mode="json")})
    trigger_id = new_id()
    record = page_record(trigger_id, None)
    found, created, conflict = await rt.storage.broadcasts.create_broadcast(
        broadcast_id=trigger_id,
        # Its own namespace: a broadcast's key is not a trigger's.
        idempotency_key=f"workflow:{workflow.key}:{idempotency_key or f'auto:{trigger_id}'}",
        request_hash=request_hash,
        api_key_id=caller.key_id or "",
        topic=body.topic,
        user_ids=None,
        template=trigger_template(workflow, given, body.cancellation_key),
        first_page=(record.topic, record.key, record.value),
    )
    if conflict:
        raise ApiError(
            409, "idempotency_conflict", "this Idempotency-Key was used with another body"
        )
    if created:
        rt.wake_relay()
    response.status_code = 202 if created else 200
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
