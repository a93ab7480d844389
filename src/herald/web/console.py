"""The operator console at /console: sign in with an API key, then find notifications and
read what happened to each, look at users, broadcasts, provider health, the dead-letter
queue and suppressions. Keys with the read (or send) scope see; manage and admin act.

Every page is rendered here; the only script is console.js (live broadcast progress), and
every form posts back with the session's CSRF token."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse
from fastapi.routing import APIRoute

from herald.api.routes.activity import REPLAY_REASON
from herald.api.routes.inbox import INBOX_TOKEN_TTL
from herald.domain import Channel, DeliveryState, mask_target
from herald.domain.workflows import RunStatus
from herald.metrics import METRICS
from herald.roles import wait_for_event
from herald.runtime import Runtime
from herald.storage import InvalidCursor, Page
from herald.storage.activity import NotificationFilter
from herald.storage.workflows import RunView
from herald.web import plots
from herald.web.pages import render
from herald.web.session import (
    BadInput,
    Forbidden,
    Session,
    SignInRequired,
    csrf_matches,
    csrf_token,
    current_session,
    end_session,
    form_fields,
    key_record,
    remember_sign_in_nonce,
    sign_in_nonce,
    start_session,
)

PAGE_SIZE = 50
HEALTH_MINUTES = 15
PLOT_MINUTES = 60
OUTCOME_ROWS = 20_000
STOPPED_BROADCAST_STATES = {"cancelled", "failed"}
UNSETTLED_DELIVERY_STATES = {"queued", "deferred", "sending"}
PROGRESS_SECONDS = 1.0
NAV = (
    ("notifications", "Notifications"),
    ("users", "Users"),
    ("broadcasts", "Broadcasts"),
    ("workflow-runs", "Workflow runs"),
    ("providers", "Providers"),
    ("dead-letters", "Dead letters"),
    ("suppressions", "Suppressions"),
)


class ConsoleRoute(APIRoute):
    """A console page: no session sends the browser to sign in; a refused action is a 403
    page that says why."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInRequired:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                query = urlencode({"next": target}) if request.method == "GET" else ""
                return RedirectResponse(f"/console/sign-in?{query}", status_code=303)
            except Forbidden as refused:
                return render(
                    "refused.html", refused.status, message=refused.message, code=refused.status
                )

        return handle


router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)


def _rt(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def _viewer(request: Request) -> tuple[Runtime, Session]:
    rt = _rt(request)
    return rt, await current_session(rt, request)


async def _actor(request: Request) -> tuple[Runtime, Session, dict[str, str]]:
    """The session of a form post that acts: CSRF token checked, manage or admin scope."""
    rt, session = await _viewer(request)
    fields = await form_fields(request)
    if not csrf_matches(rt, fields.get("csrf"), session.session_id):
        raise Forbidden(
            "This form did not come from your console session (its CSRF token is missing or "
            "stale). Reload the page and try again."
        )
    if not session.can_act:
        raise Forbidden("This key may look but not act: acting needs the manage or admin scope.")
    return rt, session, fields


FLASH_COOKIE = "herald_flash"


T = TypeVar("T")


async def _listed(
    request: Request, path: str, fetch: Callable[[str | None], Awaitable[Page[T]]]
) -> tuple[Page[T], str | None]:
    """A list page at the request's cursor, and the link to the next one (None on the last);
    a cursor that no longer decodes is a clear 400, not a 500."""
    try:
        page = await fetch(_arg(request, "cursor"))
    except InvalidCursor:
        raise BadInput("That page link is not valid any more.") from None
    return page, f"{path}?cursor={page.next_cursor}" if page.next_cursor else None


def _page(
    request: Request, template: str, session: Session, section: str, **context: Any
) -> Response:
    """A signed-in page; shows (once) what the last action said."""
    flash = request.cookies.get(FLASH_COOKIE)
    response = render(
        template,
        session=session,
        nav=NAV,
        section=section,
        flash=flash[:300] if flash else None,
        **context,
    )
    if flash:
        response.delete_cookie(FLASH_COOKIE, path="/console")
    return response


def _back(path: str, message: str) -> RedirectResponse:
    """After an action: back to the page, which then says what happened (the message goes
    in a cookie, never in the URL, so no link can make the console say anything)."""
    response = RedirectResponse(path, status_code=303)
    response.set_cookie(
        FLASH_COOKIE, message, max_age=60, path="/console", httponly=True, samesite="strict"
    )
    return response


def _arg(request: Request, name: str, limit: int = 200) -> str | None:
    value = request.query_params.get(name, "").strip()
    return value[:limit] or None


# -- signing in and out ------------------------------------------------------------------


@router.get("")
async def home() -> RedirectResponse:
    return RedirectResponse("/console/notifications", status_code=303)


def _sign_in_form(request: Request, status: int = 200, **context: Any) -> Response:
    """The sign-in page; its CSRF token names a nonce cookie set with the same response."""
    rt = _rt(request)
    nonce = sign_in_nonce(request)
    response = render(
        "sign_in.html",
        status,
        session=None,
        csrf=csrf_token(rt, nonce),
        signed_out=request.query_params.get("signed_out") == "1",
        **context,
    )
    remember_sign_in_nonce(request, response, nonce)
    return response


@router.get("/sign-in")
async def sign_in_page(request: Request) -> Response:
    return _sign_in_form(request, error=None, next=_next(request))


def _next(request: Request, given: str | None = None) -> str:
    target = given or request.query_params.get("next") or "/console/notifications"
    # Only a path of this console: never an open redirect.
    if not target.startswith("/console/") or target.startswith("//") or "\\" in target:
        return "/console/notifications"
    return target


@router.post("/sign-in")
async def sign_in(request: Request) -> Response:
    rt = _rt(request)
    fields = await form_fields(request)
    nonce = request.cookies.get("herald_sign_in", "")
    if not nonce or not csrf_matches(rt, fields.get("csrf"), nonce):
        raise Forbidden("The sign-in form expired or came from elsewhere. Reload it and try again.")
    record = await key_record(rt, fields.get("key", ""))
    if record is None:
        return _sign_in_form(
            request,
            401,
            error="That key is not valid (or was revoked).",
            next=_next(request, fields.get("next")),
        )
    response = RedirectResponse(_next(request, fields.get("next")), status_code=303)
    start_session(rt, request, response, record[0])
    return response


@router.post("/sign-out")
async def sign_out(request: Request) -> Response:
    rt, session = await _viewer(request)
    fields = await form_fields(request)
    if not csrf_matches(rt, fields.get("csrf"), session.session_id):
        raise Forbidden("Sign-out needs the form's CSRF token. Reload the page and try again.")
    response = RedirectResponse("/console/sign-in?signed_out=1", status_code=303)
    end_session(response)
    return response


# -- notifications -------------------------------------------------------------------------


def _moment(value: str | None) -> datetime | None:
    """A datetime-local field's value (the console works in UTC) or an ISO time."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadInput(f"{value!r} is not a time (use YYYY-MM-DDTHH:MM, UTC)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _choice(value: str | None, allowed: set[str], what: str) -> str | None:
    if value is not None and value not in allowed:
        raise BadInput(f"{value!r} is not a {what}")
    return value


@router.get("/notifications")
async def notifications(request: Request) -> Response:
    rt, session = await _viewer(request)
    states = {s.value for s in DeliveryState}
    filters = {
        name: _arg(request, name)
        for name in ("user_id", "category", "status", "channel", "provider", "since", "until")
    }
    where = NotificationFilter(
        user_id=filters["user_id"],
        category=filters["category"],
        status=_choice(filters["status"], states, "delivery status"),
        channel=_choice(filters["channel"], {c.value for c in Channel}, "channel"),
        provider=filters["provider"],
        since=_utc(_moment(filters["since"])),
        until=_utc(_moment(filters["until"])),
    )
    try:
        page = await rt.storage.activity.notifications(where, PAGE_SIZE, _arg(request, "cursor"))
    except InvalidCursor:
        raise BadInput("That page link is not valid any more; start the search again.") from None
    next_link = None
    if page.next_cursor:
        kept = {k: v for k, v in filters.items() if v}
        next_link = "/console/notifications?" + urlencode({**kept, "cursor": page.next_cursor})
    return _page(
        request,
        "notifications.html",
        session,
        "notifications",
        filters=filters,
        states=sorted(states),
        channels=[c.value for c in Channel],
        page=page,
        next_link=next_link,
        first_page=_arg(request, "cursor") is None,
    )


def _utc(moment: datetime | None) -> datetime | None:
    return moment.astimezone(UTC) if moment else None


@router.get("/notifications/{notification_id}")
async def notification(notification_id: str, request: Request) -> Response:
    rt, session = await _viewer(request)
    found = await rt.storage.notifications.get(notification_id)
    if found is None:
        return _page(request, "missing.html", session, "notifications", what="notification")
    deliveries = await rt.storage.notifications.deliveries_of(notification_id)
    events = await rt.storage.notifications.events_of(notification_id)
    engaged = await rt.storage.engagement.of_notification(notification_id)
    by_delivery: dict[str, list[Any]] = {d.id: [] for d in deliveries}
    for event in events:
        by_delivery.setdefault(event.delivery_id, []).append(event)
    rows = [
        {
            "delivery": d,
            "target": mask_target(d.channel, d.target),
            "events": by_delivery.get(d.id, []),
            "engagement": [
                (kind.value, at) for kind, at in engaged.get(d.id, {}).items() if at is not None
            ],
        }
        for d in deliveries
    ]
    return _page(
        request,
        "notification.html",
        session,
        "notifications",
        notification=found,
        rows=rows,
        workflow_run=(
            await rt.storage.workflows.run(found.workflow_run_id) if found.workflow_run_id else None
        ),
    )


# -- users ---------------------------------------------------------------------------------


@router.get("/users")
async def users(request: Request) -> Response:
    rt, session = await _viewer(request)
    query = _arg(request, "query")
    try:
        page = await rt.storage.activity.users(query, PAGE_SIZE, _arg(request, "cursor"))
    except InvalidCursor:
        raise BadInput("That page link is not valid any more; search again.") from None
    next_link = None
    if page.next_cursor:
        next_link = "/console/users?" + urlencode(
            {**({"query": query} if query else {}), "cursor": page.next_cursor}
        )
    return _page(
        request, "users.html", session, "users", query=query or "", page=page, next_link=next_link
    )


@router.get("/users/{user_id}")
async def user(user_id: str, request: Request) -> Response:
    rt, session = await _viewer(request)
    found = await rt.storage.directory.get_user(user_id)
    if found is None:
        return _page(request, "missing.html", session, "users", what="user")
    preferences = await rt.storage.directory.get_preferences(user_id)
    devices = await rt.storage.directory.list_devices(user_id)
    topics = await rt.storage.broadcasts.user_topics(user_id)
    inbox, unread = await rt.storage.inbox.page(user_id, 20, None, False)
    recent = await rt.storage.activity.notifications(NotificationFilter(user_id=user_id), 20, None)
    return _page(
        request,
        "user.html",
        session,
        "users",
        user=found,
        preferences=preferences,
        channels=[c.value for c in Channel],
        devices=devices,
        topics=topics,
        inbox=inbox.items,
        unread=unread,
        recent=recent.items,
    )


# -- broadcasts ----------------------------------------------------------------------------


@router.get("/broadcasts")
async def broadcasts(request: Request) -> Response:
    rt, session = await _viewer(request)
    page, next_link = await _listed(
        request,
        "/console/broadcasts",
        lambda cursor: rt.storage.activity.broadcasts(PAGE_SIZE, cursor),
    )
    return _page(request, "broadcasts.html", session, "broadcasts", page=page, next_link=next_link)


async def _progress(rt: Runtime, broadcast_id: str) -> dict[str, Any] | None:
    broadcast = await rt.storage.broadcasts.get_broadcast(broadcast_id)
    if broadcast is None:
        return None
    progress = await rt.storage.broadcasts.broadcast_progress(broadcast_id)
    deliveries = {k.removeprefix("deliveries_"): v for k, v in sorted(progress.items())}
    created, routed = deliveries.pop("recipients_created"), deliveries.pop("routed")
    state = broadcast["state"]
    settled = (
        state == "fanned_out"
        and routed >= created
        and not (UNSETTLED_DELIVERY_STATES & {s for s, n in deliveries.items() if n})
    )
    return {
        "state": state,
        "planned": broadcast["planned"],
        "recipients_created": created,
        "routed": routed,
        "deliveries": deliveries,
        "final": state in STOPPED_BROADCAST_STATES or settled,
    }


@router.get("/broadcasts/{broadcast_id}")
async def broadcast(broadcast_id: str, request: Request) -> Response:
    rt, session = await _viewer(request)
    found = await rt.storage.broadcasts.get_broadcast(broadcast_id)
    progress = await _progress(rt, broadcast_id)
    if found is None or progress is None:
        return _page(request, "missing.html", session, "broadcasts", what="broadcast")
    return _page(
        request,
        "broadcast.html",
        session,
        "broadcasts",
        broadcast=found,
        title=(found["template"] or {}).get("title"),
        progress=progress,
        final=progress["final"],
    )


@router.get("/broadcasts/{broadcast_id}/progress")
async def broadcast_progress(broadcast_id: str, request: Request) -> Response:
    """Server-Sent Events: the broadcast's progress once a second until it is final."""
    rt, _ = await _viewer(request)
    return _progress_stream(rt, request, lambda: _progress(rt, broadcast_id))


def _progress_stream(
    rt: Runtime, request: Request, read: Callable[[], Awaitable[dict[str, Any] | None]]
) -> StreamingResponse:
    """Server-Sent Events: a `progress` event each time `read()` changes (looked at once a
    PROGRESS_SECONDS), until it is final or gone, the browser leaves, or the server stops
    (the browser then reconnects)."""

    async def events() -> AsyncIterator[bytes]:
        last: dict[str, Any] | None = None
        while not (rt.stopping.is_set() or await request.is_disconnected()):
            progress = await read()
            if progress is None:
                return
            if progress != last:
                yield b"event: progress\ndata: %s\n\n" % orjson.dumps(progress)
                last = progress
            if progress["final"]:
                return
            await wait_for_event(rt.stopping, PROGRESS_SECONDS)

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


@router.post("/broadcasts/{broadcast_id}/cancel")
async def cancel_broadcast(broadcast_id: str, request: Request) -> Response:
    rt, _, _ = await _actor(request)
    path = f"/console/broadcasts/{broadcast_id}"
    if await rt.storage.broadcasts.get_broadcast(broadcast_id) is None:
        return _back("/console/broadcasts", "No such broadcast.")
    await rt.storage.broadcasts.set_broadcast_state(broadcast_id, "cancelled")
    cancelled = await rt.storage.notifications.cancel(broadcast_id=broadcast_id)
    return _back(path, f"Cancelled: {cancelled} deliveries will not go out.")


# -- workflow runs -------------------------------------------------------------------------


@router.get("/workflow-runs")
async def workflow_runs(request: Request) -> Response:
    rt, session = await _viewer(request)
    page, next_link = await _listed(
        request,
        "/console/workflow-runs",
        lambda cursor: rt.storage.workflows.runs(PAGE_SIZE, cursor),
    )
    return _page(
        request,
        "workflow_runs.html",
        session,
        "workflow-runs",
        page=page,
        next_link=next_link,
        first_page=_arg(request, "cursor") is None,
    )


def _run_progress(run: RunView) -> dict[str, Any]:
    return {
        "status": run.status.value,
        "waiting_for": run.waiting_event,
        "steps": [
            {
                "id": s.step_id,
                "type": s.type,
                "status": s.status.value,
                "notification_id": s.notification_id,
                "at": s.at.isoformat() if s.at else None,
            }
            for s in run.steps
        ],
        "final": run.status is not RunStatus.RUNNING,
    }


@router.get("/workflow-runs/{run_id}")
async def workflow_run(run_id: str, request: Request) -> Response:
    rt, session = await _viewer(request)
    run = await rt.storage.workflows.run(run_id)
    if run is None:
        return _page(request, "missing.html", session, "workflow-runs", what="workflow run")
    return _page(
        request,
        "workflow_run.html",
        session,
        "workflow-runs",
        run=run,
        final=run.status is not RunStatus.RUNNING,
    )


@router.get("/workflow-runs/{run_id}/progress")
async def workflow_run_progress(run_id: str, request: Request) -> Response:
    """Server-Sent Events: the run's steps as they change, until the run ends (or the
    server stops: the browser reconnects)."""
    rt, _ = await _viewer(request)

    async def read() -> dict[str, Any] | None:
        run = await rt.storage.workflows.run(run_id)
        return _run_progress(run) if run is not None else None

    return _progress_stream(rt, request, read)


@router.post("/workflow-runs/{run_id}/cancel")
async def cancel_workflow_run(run_id: str, request: Request) -> Response:
    rt, _, _ = await _actor(request)
    cancelled = await rt.storage.workflows.cancel_run(run_id)
    if cancelled.notification_ids:
        await rt.storage.notifications.cancel(cancelled.notification_ids)
    message = (
        "Cancelled: none of the run's steps happens from now on."
        if cancelled.runs
        else "Nothing to cancel: the run has ended."
    )
    return _back(f"/console/workflow-runs/{run_id}", message)


# -- provider health -----------------------------------------------------------------------


CIRCUIT_ELSEWHERE = "in its workers"


def _circuits() -> dict[str, bool]:
    """Circuit state as this process's workers see it (embedded: all of them). Under
    `herald api` no worker runs here: each worker process has its providers' circuits."""
    open_by_provider: dict[str, bool] = {}
    for metric in METRICS.circuit_open.collect():
        for sample in metric.samples:
            open_by_provider[sample.labels["provider"]] = sample.value >= 1
    return open_by_provider


@router.get("/providers")
async def providers(request: Request) -> Response:
    rt, session = await _viewer(request)
    now = rt.clock.now()
    window = plots.Window(now, PLOT_MINUTES)
    outcomes = await rt.storage.activity.health.outcomes_since(window.start, OUTCOME_ROWS)
    since = now - timedelta(minutes=HEALTH_MINUTES)
    retries = await rt.storage.activity.health.retries_since(since, OUTCOME_ROWS)
    circuits = _circuits()
    table: dict[str, dict[str, Any]] = {}
    for outcome in outcomes:
        name = outcome.provider or f"({outcome.channel}: none yet)"
        row = table.setdefault(
            name, {"sent": 0, "failed": 0, "channel": outcome.channel, "errors": []}
        )
        if outcome.updated_at < since:
            continue
        if outcome.state in ("sent", "delivered"):
            row["sent"] += 1
        elif outcome.state in ("failed", "undeliverable"):
            row["failed"] += 1
        if outcome.last_error and len(row["errors"]) < 3:
            row["errors"].append((outcome.updated_at, outcome.last_error))
    for name in set(circuits) | set(retries) | set(rt.settings.rate_limits):
        table.setdefault(name, {"sent": 0, "failed": 0, "channel": "", "errors": []})
    rows = [
        {
            "name": name,
            **row,
            "retried": retries.get(name, 0),
            "circuit": "open"
            if circuits.get(name)
            else ("closed" if name in circuits else CIRCUIT_ELSEWHERE),
            "rate_limit": rt.settings.rate_limits.get(name),
        }
        for name, row in sorted(table.items())
    ]
    return _page(
        request,
        "providers.html",
        session,
        "providers",
        rows=rows,
        minutes=HEALTH_MINUTES,
        per_minute=plots.deliveries_per_minute(outcomes, window),
        latency=plots.latency_percentiles(outcomes, window),
        capped=len(outcomes) >= OUTCOME_ROWS,
    )


# -- dead letters --------------------------------------------------------------------------


@router.get("/dead-letters")
async def dead_letters(request: Request) -> Response:
    rt, session = await _viewer(request)
    page, next_link = await _listed(
        request,
        "/console/dead-letters",
        lambda cursor: rt.storage.activity.dead_letters(PAGE_SIZE, cursor),
    )
    rows = [(d, mask_target(d.channel, d.target)) for d in page.items]
    return _page(
        request, "dead_letters.html", session, "dead-letters", rows=rows, next_link=next_link
    )


@router.post("/dead-letters/{delivery_id}/replay")
async def replay_one(delivery_id: str, request: Request) -> Response:
    rt, _, _ = await _actor(request)
    results = await rt.storage.activity.replay([delivery_id], REPLAY_REASON)
    if any(r.replayed for r in results):
        rt.wake_relay()
    message = (
        "Replayed: the delivery is queued again."
        if results and results[0].replayed
        else "Nothing to replay: it was replayed already."
    )
    return _back("/console/dead-letters", message)


@router.post("/dead-letters/replay-all")
async def replay_all(request: Request) -> Response:
    rt, _, _ = await _actor(request)
    ids = await rt.storage.activity.failed_ids(1000)
    results = await rt.storage.activity.replay(ids, REPLAY_REASON)
    replayed = sum(1 for r in results if r.replayed)
    if replayed:
        rt.wake_relay()
    return _back("/console/dead-letters", f"Replayed {replayed} dead letters.")


# -- suppressions --------------------------------------------------------------------------


@router.get("/suppressions")
async def suppressions(request: Request) -> Response:
    rt, session = await _viewer(request)
    channel = _choice(_arg(request, "channel"), {"email", "sms"}, "channel")
    address = _arg(request, "address", 320)
    page, next_link = await _listed(
        request,
        "/console/suppressions",
        lambda cursor: rt.storage.suppressions.page(channel, address, PAGE_SIZE, cursor),
    )
    return _page(
        request,
        "suppressions.html",
        session,
        "suppressions",
        page=page,
        next_link=next_link,
        channel=channel or "",
    )


@router.post("/suppressions")
async def add_suppression(request: Request) -> Response:
    rt, _, fields = await _actor(request)
    channel = fields.get("channel", "")
    address = fields.get("address", "").strip()
    if channel not in ("email", "sms") or not address or len(address) > 320:
        return _back("/console/suppressions", "Give a channel (email or sms) and an address.")
    reason = fields.get("reason", "").strip()[:500] or "added in the console"
    _, created = await rt.storage.suppressions.add(channel, address, reason)
    message = "Suppressed." if created else "That address was suppressed already."
    return _back("/console/suppressions", message)


@router.post("/suppressions/{suppression_id}/lift")
async def lift_suppression(suppression_id: str, request: Request) -> Response:
    rt, _, _ = await _actor(request)
    lifted = await rt.storage.suppressions.delete(suppression_id)
    return _back("/console/suppressions", "Lifted." if lifted else "It was lifted already.")


# -- the inbox element's demo ------------------------------------------------------------


@router.get("/inbox-demo")
async def inbox_demo(request: Request) -> Response:
    """`<herald-inbox>` for one user, with an inbox token minted for the page (minting one
    needs the manage scope, as POST /v1/users/{id}/inbox-token does)."""
    rt, session = await _viewer(request)
    user_id = _arg(request, "user", 128)
    token = None
    if user_id is not None:
        if not session.can_act:
            raise Forbidden("Minting an inbox token needs the manage or admin scope.")
        if await rt.storage.directory.get_user(user_id) is None:
            return _page(request, "missing.html", session, "users", what="user")
        token, _ = rt.signer.inbox_token(user_id, rt.clock.now(), INBOX_TOKEN_TTL)
    return _page(request, "inbox_demo.html", session, "users", user_id=user_id, token=token)
