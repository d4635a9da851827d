from collections import Counter

import pytest

from autoglm.engine.upstream.router import Router
from autoglm.settings import InstanceSpec


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(weights=(1, 1), max_fails=3, fail_timeout=10.0):
    clock = Clock()
    r = Router("m", max_fails, fail_timeout, clock)
    insts = [r.add(InstanceSpec(url=f"http://h{i}", weight=w)) for i, w in enumerate(weights)]
    return r, insts, clock


def test_weights_are_honoured_when_idle() -> None:
    r, (a, b, c), _ = make((5, 3, 1))
    got = Counter(r.pick().name for _ in range(900))
    assert got == {a.name: 500, b.name: 300, c.name: 100}


def test_least_connections_prefers_the_idle_instance() -> None:
    r, (a, b), _ = make((1, 1))
    r.acquire(a)
    r.acquire(a)
    assert r.pick() is b
    r.acquire(b)
    assert r.pick() is b  # 1 in flight against 2
    r.acquire(b)
    r.acquire(b)
    assert r.pick() is a


def test_least_connections_is_weighted() -> None:
    r, (a, b), _ = make((4, 1))
    for _ in range(3):
        r.acquire(a)
    assert r.pick() is b  # 3/4 > 0/1
    r.acquire(b)
    assert r.pick() is a  # 3/4 < 1/1


def test_max_fails_within_window_ejects_then_returns() -> None:
    r, (a, b), clock = make((1, 1), max_fails=3, fail_timeout=10)
    r.failure(a, "x")
    clock.now += 4
    r.failure(a, "x")
    assert a.state(clock.now) == "up"
    clock.now += 4
    r.failure(a, "x")
    assert a.state(clock.now) == "down"
    assert all(r.pick() is b for _ in range(10))
    assert r.healthy() == 1
    clock.now += 10.01
    assert a.state(clock.now) == "up"
    assert a in {r.pick() for _ in range(4)}
    r.failure(a, "again")  # one failure soon after coming back: out again
    assert a.state(clock.now) == "down"


def test_failures_outside_the_window_do_not_add_up() -> None:
    r, (a, _), clock = make((1, 1), max_fails=2, fail_timeout=5)
    r.failure(a, "x")
    clock.now += 6
    r.failure(a, "x")
    assert a.state(clock.now) == "up"


def test_success_resets_failures() -> None:
    r, (a, _), clock = make((1, 1), max_fails=2)
    r.failure(a, "x")
    r.success(a)
    r.failure(a, "x")
    assert a.state(clock.now) == "up"


def test_all_down_gives_none_and_retry_after() -> None:
    r, (a, b), clock = make((1, 1), max_fails=1, fail_timeout=7)
    r.failure(a, "x")
    clock.now += 2
    r.failure(b, "x")
    assert r.pick() is None
    assert r.retry_after() == pytest.approx(5.0)


def test_exclude_skips_an_instance() -> None:
    r, (a, b), _ = make((10, 1))
    assert r.pick(exclude={a}) is b
    assert r.pick(exclude={a, b}) is None


def test_drain_stops_new_traffic_until_resumed() -> None:
    r, (a, b), _ = make((1, 1))
    r.drain(a)
    assert a.state(0) == "draining"
    assert all(r.pick() is b for _ in range(5))
    r.resume(a)
    assert a in {r.pick() for _ in range(4)}


def test_remove_waits_for_in_flight_requests() -> None:
    r, (a, b), _ = make((1, 1))
    r.acquire(a)
    r.remove(a)
    assert a in r.instances  # still finishing its request
    assert all(r.pick() is b for _ in range(5))
    r.release(a)
    assert a not in r.instances
    r.remove(b)
    assert r.instances == []


def test_names_are_unique() -> None:
    r, _, _ = make((1,))
    r.add(InstanceSpec(url="http://x", name="gpu-1"))
    with pytest.raises(ValueError):
        r.add(InstanceSpec(url="http://y", name="gpu-1"))
