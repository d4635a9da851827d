"""Failed authentication: refused early, limited per address, logged in aggregate."""

from __future__ import annotations

import logging

import pytest

from autoglm.errors import AuthenticationError, RateLimitError
from autoglm.security import keys
from autoglm.security.auth import Authenticator
from autoglm.security.failures import AuthFailures


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class CountingKeys:
    """Stands in for the key store: counts how often a key reached the lookup."""

    def __init__(self) -> None:
        self.looked_up: list[str] = []

    async def resolve(self, token: str):  # noqa: ANN201
        self.looked_up.append(token)
        return None


async def test_a_token_that_cannot_be_a_key_is_refused_before_any_lookup() -> None:
    store = CountingKeys()
    auth = Authenticator(store)  # type: ignore[arg-type]
    good_shape = keys.generate_key()
    for token in ("short", "agk_" + "x" * 49, good_shape[:-1] + ("A" if good_shape[-1] != "A"
                                                                 else "B"), "z" * 300):
        with pytest.raises(AuthenticationError):
            await auth.authenticate(f"Bearer {token}")
    assert store.looked_up == []  # no hashing, no database
    with pytest.raises(AuthenticationError):
        await auth.authenticate(f"Bearer {good_shape}")  # well formed: looked up
    assert store.looked_up == [good_shape]


async def test_failures_per_address_are_limited_then_forgiven(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    auth = Authenticator(CountingKeys(), AuthFailures(3, 10.0, clock))  # type: ignore[arg-type]
    for _ in range(3):
        with pytest.raises(AuthenticationError):
            await auth.authenticate("Bearer nope", "10.0.0.9")
    with pytest.raises(RateLimitError) as refused:
        await auth.authenticate("Bearer anything-at-all", "10.0.0.9")
    assert refused.value.status == 429 and 0 < refused.value.retry_after <= 10
    with pytest.raises(AuthenticationError):  # another address is not affected
        await auth.authenticate("Bearer nope", "10.0.0.10")
    clock.now += 10.5
    with caplog.at_level(logging.WARNING, logger="autoglm.auth"):
        with pytest.raises(AuthenticationError):  # the window is over: tried again
            await auth.authenticate("Bearer nope", "10.0.0.9")
    lines = [r for r in caplog.records if r.getMessage() == "failed authentications"]
    assert len(lines) == 1 and lines[0].failures == 3  # one line for the window, not three
