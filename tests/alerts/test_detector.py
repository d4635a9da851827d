"""The detector on generated traffic (``traffic.py``): quiet on a week of normal diurnal
load, and it finds the injected anomalies within a bucket or two. The rule's parts one by
one: warm-up, cool-down, the seasonal peak, new addresses, bounded memory."""

from __future__ import annotations

from collections import Counter

import pytest

from autoglm.alerts.detector import (
    MAX_ADDRESSES,
    NEW_FOR_BUCKETS,
    Detector,
    Rule,
    Tally,
)
from tests.alerts.traffic import DAY_MIN, KEYS, MONDAY, Traffic

FIRST = int(MONDAY // 60)  # the bucket of Monday 00:00 (1-minute buckets)
WEEK = 7 * DAY_MIN
SUBJECTS = len(KEYS) + len({k.tenant_id for k in KEYS})


def run(traffic: Traffic, rule: Rule | None = None) -> list[tuple[int, object]]:
    """(minute of the week, alert) for every alert of a week."""
    detector = Detector(rule or Rule())
    out = []
    for bucket, tallies in traffic.minutes(WEEK):
        out += [(bucket - FIRST, a) for a in detector.observe(bucket, tallies).alerts]
    return out


@pytest.mark.parametrize(("bursty", "seed", "most"), [(False, 1, 0), (True, 2, 2)])
def test_a_week_of_diurnal_load_raises_no_or_almost_no_alert(bursty: bool, seed: int,
                                                             most: int) -> None:
    """Eight keys of two tenants (office hours with weekends, smooth, a nightly job,
    sparse), a week of minutes. Measured over 15 seeds (1,050 subject-days): Poisson
    counts 0 alerts; overdispersed ("bursty") counts 8, all on weekend nights of the
    busiest office key, whose weekend nights are twice its weekday nights: 0.008 alerts
    per subject-day."""
    alerts = run(Traffic(seed, bursty=bursty))
    rate = len(alerts) / (SUBJECTS * 7)
    print(f"\nfalse alarms, {'bursty' if bursty else 'Poisson'} load, seed {seed}: "
          f"{len(alerts)} in {SUBJECTS * 7} subject-days = {rate:.4f} per subject-day")
    for minute, a in alerts:
        print(f"  day {minute // DAY_MIN} {minute % DAY_MIN // 60:02d}:{minute % 60:02d} "
              f"{a.subject} {a.signal} {a.value:g} (threshold {a.threshold:.1f})")
    assert len(alerts) <= most


def test_the_injected_anomalies_are_all_found_within_two_buckets() -> None:
    t = Traffic(7)
    injected = {  # what, key, first minute of the week, signal that must be raised
        "leak by day": ("key_office_mid", 3 * DAY_MIN + 14 * 60, ("requests", "new_address")),
        "leak by night": ("key_smooth_big", 4 * DAY_MIN + 3 * 60, ("requests", "new_address")),
        "leak in the nightly job": ("key_nightly", 5 * DAY_MIN + 2 * 60 + 10,
                                    ("requests", "new_address")),
        "probing": ("key_smooth_mid", 2 * DAY_MIN + 10 * 60, ("refusals",)),
        "failures": ("key_office_big", 6 * DAY_MIN + 16 * 60, ("errors",)),
    }
    for what, (key, start, _) in injected.items():
        if what.startswith("leak"):
            t.burst(key, start, 10, factor=10.0)
        elif what == "probing":
            t.refusals(key, start, 5, per_minute=30)
        else:
            t.errors(key, start, 5, per_minute=40)
    alerts = run(t)
    tenant = {k.key_id: k.tenant_id for k in KEYS}
    delays: dict[str, dict[str, int]] = {}
    stray = []
    for minute, a in alerts:
        hit = [what for what, (key, start, _) in injected.items()
               if a.subject in (key, tenant[key]) and start <= minute < start + 10]
        if not hit:
            stray.append((minute, a.subject, a.signal))
        elif a.scope == "key":
            delays.setdefault(hit[0], {}).setdefault(a.signal, minute - injected[hit[0]][1])
    print("\ndetection delay in buckets (0: the first bucket of the anomaly):", delays)
    for what, (_, _, signals) in injected.items():
        for signal in signals:
            assert delays.get(what, {}).get(signal, 99) <= 2, (what, signal, delays)
    assert stray == []
    leak = next(a for _, a in alerts if a.signal == "new_address" and a.subject == "key_office_mid")
    assert leak.addresses == ("203.0.113.7",) and leak.principal_id == "prn_office_mid"
    assert leak.tenant_id == "ten_a" and leak.key_id == "key_office_mid"


# --- the rule's parts ---------------------------------------------------------------------------
RULE = Rule(bucket_s=60.0, window=30, warmup_s=600.0, cooldown_s=1800.0, min_count=10)


def steady(detector: Detector, start: int, buckets: int, n: int = 5,
           addr: str = "10.0.0.1") -> list:
    out = []
    for b in range(start, start + buckets):
        out += detector.observe(b, {("key", "key_a"): Tally(
            requests=n, tokens=100 * n, tenant_id="ten_a", addresses={addr: n})}).alerts
    return out


def burst(detector: Detector, bucket: int, n: int, addr: str = "10.0.0.1") -> list:
    return detector.observe(bucket, {("key", "key_a"): Tally(
        requests=n, tokens=100 * n, tenant_id="ten_a", addresses={addr: n})}).alerts


def test_no_alert_during_the_warm_up_then_one_per_cool_down() -> None:
    d = Detector(RULE)
    assert steady(d, 0, 5) == []
    assert burst(d, 5, 200) == []  # 5 buckets old: warming up (10)
    assert steady(d, 6, 30) == []
    first = burst(d, 36, 200)
    assert [a.signal for a in first] == ["requests"]  # the usual address: no new_address
    a = first[0]
    assert a.value == 200 and a.baseline == 5 and a.threshold == max(
        5 + RULE.k * a.spread, RULE.ratio * a.peak, RULE.min_count)
    assert a.at == 37 * 60.0 and "2.5*peak" in a.rule
    assert burst(d, 37, 200) == []  # cooling down (30 buckets)
    assert steady(d, 38, 27) == []
    assert [x.signal for x in burst(d, 67, 400)] == ["requests"]


def test_a_burst_enters_the_history_as_its_threshold_not_itself() -> None:
    d = Detector(RULE)
    steady(d, 0, 40)
    alert = burst(d, 40, 10_000)[0]
    h = d._subjects[("key", "key_a")]
    assert h.recent["requests"][h.pos - 1] == int(alert.threshold)


def test_a_new_address_at_several_times_the_rate_alerts_once() -> None:
    d = Detector(RULE)
    steady(d, 0, 40)
    assert steady(d, 40, 3, n=5, addr="10.9.9.9") == []  # a new address at the usual rate
    got = burst(d, 43, 100, addr="203.0.113.7")
    assert sorted(a.signal for a in got) == ["new_address", "requests"]
    assert next(a for a in got if a.signal == "new_address").addresses == ("203.0.113.7",)
    # new for NEW_FOR_BUCKETS buckets from its first use; then one of the key's own
    assert d._subjects[("key", "key_a")].addresses["203.0.113.7"][0] == 43
    assert steady(d, 44 + NEW_FOR_BUCKETS, 3, n=5, addr="203.0.113.7") == []


def test_a_daily_job_is_expected_from_its_second_day() -> None:
    """With hourly buckets' worth of minutes: a job at 02:00 every day for 20 minutes at
    40 times the usual rate alerts on its first day only (past the warm-up)."""
    rule = Rule(bucket_s=60.0, window=60, warmup_s=3600.0, min_count=10)
    d = Detector(rule)
    raised = Counter()
    for day in range(4):
        for m in range(DAY_MIN):
            n = 80 if 120 <= m < 140 else 2
            for a in d.observe(FIRST + day * DAY_MIN + m, {("key", "key_a"): Tally(
                    requests=n, tokens=0, addresses={"10.0.0.1": n})}).alerts:
                raised[(day, a.signal)] += 1
    assert raised == {(0, "requests"): 1}


def test_memory_is_bounded() -> None:
    d = Detector(Rule(max_subjects=50, window=10))
    for i in range(200):
        d.observe(i, {("key", f"key_{i}"): Tally(requests=1)})
    assert len(d) == 50
    assert ("key", "key_199") in set(d.subjects()) and ("key", "key_0") not in set(d.subjects())
    d.observe(500, {("key", "key_x"): Tally(
        requests=600, addresses={f"10.1.{i // 256}.{i % 256}": 1 for i in range(600)})})
    assert len(d._subjects[("key", "key_x")].addresses) == MAX_ADDRESSES
