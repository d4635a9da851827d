"""Folding floods of identical refusals (no database: the Folder alone)."""

from __future__ import annotations

from autoglm.audit import Folder, Record


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def refusal(client: str = "203.0.113.9", status: int = 401, i: int = 0) -> Record:
    return Record(action="auth", decision="deny", status=status, client_addr=client,
                  request_id=f"r-{i}")


def test_a_flood_costs_two_records_per_interval() -> None:
    clock = Clock()
    folder = Folder(1.0, clock=clock)
    passed = [folder.offer(refusal(i=i)) for i in range(500)]
    assert [r.request_id for r in passed if r is not None] == ["r-0"]  # the first at once
    assert folder.due() == []  # the interval is not over
    clock.now += 1.0
    [count] = folder.due()
    assert (count.count, count.request_id, count.seq) == (499, "r-1", None)
    assert set(count.detail["folded"]) == {"from", "to"}
    assert folder.offer(refusal(i=500)) is not None  # a new interval starts anew


def test_an_event_after_the_interval_closes_the_count_and_passes() -> None:
    clock = Clock()
    folder = Folder(1.0, clock=clock)
    folder.offer(refusal(i=0))
    folder.offer(refusal(i=1))
    folder.offer(refusal(i=2))
    clock.now += 5
    assert folder.offer(refusal(i=3)).request_id == "r-3"
    [count] = folder.due()
    assert count.count == 2 and count.request_id == "r-1"


def test_different_kinds_are_not_folded_together() -> None:
    folder = Folder(1.0, clock=Clock())
    assert folder.offer(refusal("203.0.113.9")) is not None
    assert folder.offer(refusal("203.0.113.10")) is not None
    assert folder.offer(refusal(status=403)) is not None
    assert folder.offer(refusal()) is None
    assert [r.count for r in folder.drain()] == [1]


def test_memory_stays_bounded_and_overflow_passes_unfolded() -> None:
    folder = Folder(1.0, max_kinds=10, clock=Clock())
    for n in range(10):
        folder.offer(refusal(f"10.0.0.{n}"))
    assert folder.offer(refusal("10.0.1.1")) is not None
    assert folder.offer(refusal("10.0.1.1")) is not None  # not tracked: never swallowed
    assert folder.drain() == []
