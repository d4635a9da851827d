"""The identity a batch's lines run under: the key that created the batch, as it is now.

Each line runs with the identity that key resolves to when the line runs (read again
from the database, remembered ``ttl_s``), so a line gets exactly the rights a live
request with that key would get at that moment:

- revoking the key, disabling its principal or the key expiring stops the batch: its
  remaining lines fail with 401 ``invalid_api_key`` (error file; each refusal audited),
  within ``ttl_s``. A leaked key must stop what it started, and a batch runs for hours;
- rotating the key does not: the successor has the same rights under a new secret;
- a binding removed or a model withdrawn from the project meanwhile applies to the lines
  that run afterwards (the same 404 a live request gets).

Running as the principal instead would drop the key's narrowing (projects, models,
actions) and would outlive a revoked key; freezing the identity at creation would
outlive both a revocation and a removed binding.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from autoglm.security.auth import ANONYMOUS_ADMIN, Authenticator
from autoglm.security.keystore import Identity

CACHE = 10_000


class Owners:
    def __init__(self, auth: Authenticator, ttl_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.auth = auth
        self.ttl_s = ttl_s
        self.clock = clock
        self._cache: dict[str, tuple[Identity | None, float]] = {}

    async def identity(self, key_id: str) -> Identity | None:
        """The identity of the batch's key now; None when it speaks for nobody."""
        keys = self.auth.keys
        if keys is None:  # authentication disabled (loudly): as every live request
            return ANONYMOUS_ADMIN
        entry = self._cache.get(key_id)
        if entry is not None and self.clock() - entry[1] <= self.ttl_s:
            return entry[0]
        found = await asyncio.to_thread(keys.identity_of, key_id)
        cache = self._cache
        cache.pop(key_id, None)
        while len(cache) >= CACHE:
            del cache[next(iter(cache))]
        cache[key_id] = (found, self.clock())
        return found
