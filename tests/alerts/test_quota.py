"""Tenants nearing their daily token quota: once per day per threshold, the higher one
when two are passed at once, and the count starts over with the UTC day."""

from __future__ import annotations

from autoglm.alerts.quota import DAY_S, QuotaWatch

DAY0 = 20_000 * DAY_S  # a midnight, UTC


def test_a_day_of_usage_crosses_each_threshold_once() -> None:
    watch = QuotaWatch([0.8, 0.95])
    limits = {"ten_a": 10_000, "ten_b": 10_000, "ten_free": None}
    raised = []
    for minute in range(0, 1440, 5):  # ten_a uses 10 tokens a minute: 14,400 by midnight
        now = DAY0 + minute * 60
        used = {"ten_a": 10 * minute, "ten_b": 100, "ten_free": 10**9}
        raised += [(minute, a) for a in watch.check(now, used, limits.get)]
    assert [(m, a.subject, a.threshold) for m, a in raised] == [
        (800, "ten_a", 0.8), (950, "ten_a", 0.95)]
    first = raised[0][1]
    assert first.signal == "quota" and first.scope == "tenant" and first.tenant_id == "ten_a"
    assert first.extra == {"used_tokens": 8000, "tokens_per_day": 10_000,
                           "day": "2024-10-04"}
    assert first.value == 0.8 and "80%" in first.rule
    assert watch.active == 1


def test_two_thresholds_at_once_are_one_alert_and_a_new_day_starts_over() -> None:
    watch = QuotaWatch([0.95, 0.8])
    got = watch.check(DAY0 + 60, {"ten_a": 9_700}, lambda _t: 10_000)
    assert [a.threshold for a in got] == [0.95]
    assert watch.check(DAY0 + 120, {"ten_a": 9_800}, lambda _t: 10_000) == []
    next_day = watch.check(DAY0 + DAY_S + 60, {"ten_a": 8_100}, lambda _t: 10_000)
    assert [a.threshold for a in next_day] == [0.8]
    assert next_day[0].extra["day"] == "2024-10-05"


def test_no_quota_no_alert() -> None:
    watch = QuotaWatch([0.8])
    assert watch.check(DAY0, {"ten_a": 10**12}, lambda _t: None) == []
    assert QuotaWatch([]).check(DAY0, {"ten_a": 10}, lambda _t: 1) == []
