"""Single-flight locks with a lease in a real Redis: one holder at a time across
processes, a 409 naming the operation after the wait, renewed while held, freed when
the holder dies (its lease ends), a no-op without Redis or while it is away."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from autoglm.errors import LockBusyError
from autoglm.state.locks import Locks
from tests.redis_server import RedisServer


def test_one_holder_at_a_time_and_a_409_after_the_wait(redis_server: RedisServer) -> None:
    a = Locks(redis_server.url, prefix="t:", wait_s=0.3)
    b = Locks(redis_server.url, prefix="t:", wait_s=0.3)
    with a.hold("pull:m"):
        with pytest.raises(LockBusyError) as caught, b.hold("pull:m", what="a pull of m"):
            pass
        assert caught.value.status == 409 and "a pull of m is already under way" in \
            caught.value.message
        with b.hold("pull:other"):  # another name is another lock
            pass
    with b.hold("pull:m"):  # released
        pass


def test_a_waiter_gets_it_when_the_holder_lets_go(redis_server: RedisServer) -> None:
    a, b = (Locks(redis_server.url, prefix="t:", wait_s=5) for _ in range(2))
    order: list[str] = []

    def second() -> None:
        with b.hold("rotate"):
            order.append("b")

    with a.hold("rotate"):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.3)
        order.append("a done")
    t.join(5)
    assert order == ["a done", "b"]


def test_the_lease_is_renewed_while_held(redis_server: RedisServer) -> None:
    a = Locks(redis_server.url, prefix="t:", lease_s=0.3, wait_s=0.1)
    b = Locks(redis_server.url, prefix="t:", wait_s=0.1)
    with a.hold("long"):
        time.sleep(1.0)  # three leases long
        with pytest.raises(LockBusyError), b.hold("long"):
            pass


def test_a_dead_holder_frees_it_when_its_lease_ends(redis_server: RedisServer) -> None:
    code = ("import time; from autoglm.state.locks import Locks; "
            f"l = Locks({redis_server.url!r}, prefix='t:', lease_s=0.5); "
            "l._acquire('engine-start', None); print('held', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline().strip() == b"held"
    child.kill()
    child.wait()
    waiter = Locks(redis_server.url, prefix="t:", wait_s=5)
    started = time.monotonic()
    with waiter.hold("engine-start"):
        assert time.monotonic() - started < 2


def test_without_redis_or_while_it_is_away_hold_does_not_block(
        redis_server: RedisServer) -> None:
    with Locks(None).hold("x"), Locks(None).hold("x"):
        pass
    locks = Locks(redis_server.url, prefix="t:")
    redis_server.stop()
    with locks.hold("x"), locks.hold("x"):
        pass
