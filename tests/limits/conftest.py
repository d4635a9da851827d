"""Limits tests run in one long window (an hour), and never start in its last minute: a
window ending half way through a test would hand out a fresh budget and make it lie."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.redis_server import redis_server

__all__ = ["WINDOW_S", "redis_server"]

WINDOW_S = 3600.0


@pytest.fixture(autouse=True)
def _not_at_a_windows_end() -> Iterator[None]:
    left = WINDOW_S - time.time() % WINDOW_S
    if left < 60:
        time.sleep(left + 0.1)
    yield
