"""Planning deliveries from one notification: targets, content, skip reasons. Pure."""

from __future__ import annotations

from datetime import UTC, datetime, time

from herald.domain import (
    CategorySettings,
    Channel,
    DeliveryPolicy,
    DeliveryState,
    Device,
    DigestRule,
    FrequencyCap,
    Notification,
    Platform,
    Preferences,
    Priority,
    QuietHours,
    User,
)
from herald.router.planner import EmailExtras, plan_deliveries, plan_routing
from herald.storage.records import RoutingInput

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
TEMPLATE = {
    "default_locale": "en",
    "locales": {
        "en": {
            "push": {"title": "Hi {{ name }}", "body": "en"},
            "email": {"subject": "Welcome", "text": "Hi {{ name }}", "html": "<b>{{ name }}</b>"},
        },
        "de": {"push": {"title": "Hallo {{ name }}", "body": "de"}},
    },
}


def routing(
    *,
    locale: str = "en",
    devices: int = 2,
    template: dict[str, object] | None = None,
    suppressed: set[tuple[str, str]] | None = None,
    category: CategorySettings | None = None,
    channel_caps: dict[Channel, FrequencyCap] | None = None,
    **notification: object,
) -> RoutingInput:
    user = User("42", email="ada@example.com", phone="+14155550100", timezone="UTC", locale=locale)
    fields: dict[str, object] = {
        "title": "T",
        "body": "B",
        "category": "news",
        "priority": Priority.NORMAL,
    }
    fields.update(notification)
    return RoutingInput(
        notification=Notification(id="n1", user_id="42", created_at=NOW, **fields),  # type: ignore[arg-type]
        user=user,
        preferences=Preferences(),
        devices=[Device(f"d{i}", "42", Platform.IOS, f"{i:02d}" * 32) for i in range(devices)],
        category=category
        or CategorySettings("news", policy={Channel.PUSH: DeliveryPolicy.AT_MOST_ONCE}),
        template=template,  # type: ignore[arg-type]
        suppressed=suppressed or set(),
        channel_caps=channel_caps or {},
    )


def by_channel(deliveries: list[object]) -> dict[str, list[object]]:
    grouped: dict[str, list[object]] = {}
    for d in deliveries:
        grouped.setdefault(d.channel.value, []).append(d)  # type: ignore[attr-defined]
    return grouped


def test_one_delivery_per_device_and_address() -> None:
    planned = plan_deliveries(routing(), NOW)
    grouped = by_channel(planned)
    assert {k: len(v) for k, v in grouped.items()} == {"push": 2, "email": 1, "sms": 1, "in_app": 1}
    assert {d.state for d in planned} == {DeliveryState.QUEUED}
    assert len({d.id for d in planned}) == 5
    assert {d.policy for d in grouped["push"]} == {DeliveryPolicy.AT_MOST_ONCE}  # type: ignore[attr-defined]


def test_replanning_gives_the_same_ids() -> None:
    assert [d.id for d in plan_deliveries(routing(), NOW)] == [
        d.id for d in plan_deliveries(routing(), NOW)
    ]


def test_template_is_rendered_in_the_users_locale_with_fallback() -> None:
    variables = {"name": "Ada"}
    german = by_channel(
        plan_deliveries(routing(locale="de-AT", template=TEMPLATE, variables=variables), NOW)
    )
    assert german["push"][0].payload["title"] == "Hallo Ada"  # type: ignore[attr-defined]
    assert german["email"][0].payload["subject"] == "Welcome"  # type: ignore[attr-defined]
    french = by_channel(
        plan_deliveries(routing(locale="fr", template=TEMPLATE, variables=variables), NOW)
    )
    assert french["push"][0].payload["title"] == "Hi Ada"  # type: ignore[attr-defined]
    email = french["email"][0].payload  # type: ignore[attr-defined]
    assert (email["text"], email["html"]) == ("Hi Ada", "<b>Ada</b>")


def test_a_template_that_fails_at_routing_skips_with_the_reason() -> None:
    planned = plan_deliveries(routing(template=TEMPLATE, variables={}), NOW)
    push = by_channel(planned)["push"][0]
    assert push.state == DeliveryState.SKIPPED  # type: ignore[attr-defined]
    assert "missing variable" in push.last_error  # type: ignore[attr-defined]


def test_no_device_and_suppressed_address_are_skipped_with_reasons() -> None:
    planned = plan_deliveries(routing(devices=0, suppressed={("email", "ada@example.com")}), NOW)
    reasons = {d.channel.value: (d.state, d.last_error) for d in planned}
    assert reasons["push"] == (DeliveryState.SKIPPED, "no active device")
    assert reasons["email"] == (DeliveryState.SKIPPED, "address is suppressed")
    assert reasons["sms"][0] == DeliveryState.QUEUED


def test_unsubscribe_link_only_for_non_critical_email() -> None:
    def link(user: str, category: str) -> str:
        return f"https://h/unsub/{user}/{category}"

    normal = by_channel(plan_deliveries(routing(), NOW, EmailExtras(link)))["email"][0]
    assert normal.payload["unsubscribe_url"] == "https://h/unsub/42/news"  # type: ignore[attr-defined]
    critical = by_channel(
        plan_deliveries(routing(priority=Priority.CRITICAL), NOW, EmailExtras(link))
    )["email"][0]
    assert "unsubscribe_url" not in critical.payload  # type: ignore[attr-defined]


def test_quiet_hours_defer_with_a_due_time() -> None:
    plan = routing()
    plan.preferences = Preferences(quiet_hours=QuietHours(time(11), time(13)))
    planned = plan_deliveries(plan, NOW)
    assert {d.state for d in planned} == {DeliveryState.DEFERRED}
    assert {d.due_at for d in planned} == {datetime(2026, 6, 1, 13, 0, tzinfo=UTC)}


def test_ttl_sets_the_expiry_and_collapse_key_travels() -> None:
    planned = plan_deliveries(routing(ttl_seconds=600, collapse_key="order-7"), NOW)
    assert {d.expires_at for d in planned} == {datetime(2026, 6, 1, 12, 10, tzinfo=UTC)}
    assert {d.payload["_collapse_key"] for d in planned} == {"order-7"}


def test_a_deleted_user_gets_nothing() -> None:
    plan = routing()
    plan.user = None
    assert plan_deliveries(plan, NOW) == []


# -- shaping: digests and caps ---------------------------------------------------------------

HOURLY = DigestRule(window_seconds=3600, template="news-digest")
THREE_AN_HOUR = FrequencyCap(3, 3600)


def test_a_digest_channel_gets_one_folded_delivery_and_the_others_send() -> None:
    category = CategorySettings("news", digest={Channel.PUSH: HOURLY})
    plan = plan_routing(routing(category=category, channels=[Channel.PUSH, Channel.EMAIL]), NOW)
    states = sorted((d.channel.value, d.state.value) for d in plan.deliveries)
    assert states == [("email", "queued"), ("push", "digested")]
    [fold] = plan.folds
    folded = next(d for d in plan.deliveries if d.channel == Channel.PUSH)
    assert fold.delivery_ids == (folded.id,)
    assert fold.item == {"title": "T", "body": "B", "notification_id": "n1", "at": NOW.isoformat()}
    window = fold.window()
    assert (window.start, window.end) == (NOW, NOW.replace(hour=13))
    assert folded.last_error is not None
    assert folded.last_error.startswith("folded into digest dg_")
    assert plan.claims == []


def test_a_deferred_notification_folds_into_the_window_it_is_due_in() -> None:
    category = CategorySettings("news", digest={Channel.PUSH: HOURLY})
    later = NOW.replace(hour=15, minute=30)
    plan = plan_routing(routing(category=category, channels=[Channel.PUSH], send_at=later), NOW)
    assert plan.folds[0].window().start == NOW.replace(hour=15)


def test_critical_and_digests_themselves_are_never_folded_or_capped() -> None:
    category = CategorySettings(
        "news", digest={Channel.PUSH: HOURLY}, caps={Channel.EMAIL: THREE_AN_HOUR}
    )
    for notification in ({"priority": Priority.CRITICAL}, {"digest_id": "dg_1"}):
        plan = plan_routing(routing(category=category, **notification), NOW)
        assert {d.state for d in plan.deliveries} == {DeliveryState.QUEUED}
        assert (plan.folds, plan.claims) == ([], [])


def test_caps_claim_one_slot_per_notification_and_channel_for_every_device() -> None:
    category = CategorySettings("news", caps={Channel.PUSH: FrequencyCap(1, 86400)})
    plan = plan_routing(
        routing(category=category, devices=3, channel_caps={Channel.PUSH: THREE_AN_HOUR}), NOW
    )
    [claim] = plan.claims
    pushes = [d.id for d in plan.deliveries if d.channel == Channel.PUSH]
    assert sorted(claim.delivery_ids) == sorted(pushes)
    assert len(pushes) == 3
    assert [(r.cap, r.category) for r in claim.rules] == [
        (THREE_AN_HOUR, None),
        (FrequencyCap(1, 86400), "news"),
    ]
    assert claim.overflow is None
    assert claim.at == NOW


def test_over_the_cap_a_category_may_fold_into_a_digest() -> None:
    overflow = DigestRule(window_seconds=3600)
    category = CategorySettings("news", over_cap_digest={Channel.SMS: overflow})
    plan = plan_routing(routing(category=category, channel_caps={Channel.SMS: THREE_AN_HOUR}), NOW)
    [claim] = plan.claims
    assert claim.channel == Channel.SMS
    assert claim.overflow is not None
    assert claim.overflow.rule == overflow
    assert claim.overflow.delivery_ids == claim.delivery_ids


def test_skipped_channels_are_neither_folded_nor_counted() -> None:
    category = CategorySettings("news", digest={Channel.PUSH: HOURLY})
    plan = plan_routing(
        routing(category=category, devices=0, channel_caps={Channel.SMS: THREE_AN_HOUR}),
        NOW,
    )
    push = [d for d in plan.deliveries if d.channel == Channel.PUSH]
    assert [(d.state, d.last_error) for d in push] == [(DeliveryState.SKIPPED, "no active device")]
    assert plan.folds == []
    assert [c.channel for c in plan.claims] == [Channel.SMS]


def test_size_limits_are_each_channels_own() -> None:
    long = "x" * 5000  # over every push platform's 4 KB, fine for email and the inbox
    planned = plan_deliveries(routing(body=long), NOW)
    states = {(d.channel.value, d.state, d.last_error) for d in planned}
    assert states == {
        (
            "push",
            DeliveryState.SKIPPED,
            "the ios push payload is 1005 bytes over the provider's limit",
        ),
        ("email", DeliveryState.QUEUED, None),
        ("sms", DeliveryState.SKIPPED, "the SMS text is over 1600 characters"),
        ("in_app", DeliveryState.QUEUED, None),
    }
    fits = plan_deliveries(routing(body="x" * 1600), NOW)
    assert {d.state for d in fits} == {DeliveryState.QUEUED}


def test_the_preference_center_link_goes_beside_the_unsubscribe_link() -> None:
    def link(user: str, category: str) -> str:
        return f"https://h/unsub/{user}/{category}"

    def preferences(user: str, category: str) -> str:
        return f"https://h/preferences/{user}/{category}"

    planned = plan_routing(routing(), NOW, EmailExtras(link, preferences)).deliveries
    (email,) = by_channel(planned)["email"]
    assert email.payload["preferences_url"] == "https://h/preferences/42/news"  # type: ignore[attr-defined]
    assert all("preferences_url" not in d.payload for d in by_channel(planned)["push"])  # type: ignore[attr-defined]
