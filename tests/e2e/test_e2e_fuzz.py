"""Schemathesis fuzzes a live `autoglm serve` (the real bundled model): no 5xx anywhere,
and every route with a path parameter is called with real ids.

The server serves the bundled model on the embedded engine and a pool model on a
stand-in upstream (so that instances can be added, drained, resumed and removed).
Two phases, each bounded in examples and in time (about a minute in all on 2 cores):

- stateless: each operation alone, positive and negative (schema-violating) cases;
- stateful: scenarios that follow the OpenAPI links of /openapi.json (a tenant created,
  then its principal, that principal's key, that key rotated and revoked, ...).

Before the links, a run of 2,135 cases called 17 operations only with made-up ids (all
404), which is why ``expires_in_hours: 1e12`` on a real principal, a 500, was not found.
The stateful test therefore also asserts that every operation with a path parameter got
at least one 2xx.

What the fuzzer may not do, and why (``fuzz.Fuzz.confine``): an instance it adds always
points at the stand-in on loopback (traffic stays on this machine), and inference asks for
at most 4 tokens (so streams stay in the run, and bounded). ``AUTOGLM_FUZZ_SCALE=N``
multiplies the examples and the time budget, for a deeper run by hand.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.standin import Standin

from . import fuzz as fz
from .conftest import StartServer
from .support import MODEL, ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.model]

POOL = "fuzz-pool"
SCALE = max(1, int(os.environ.get("AUTOGLM_FUZZ_SCALE", "1")))
STATELESS_EXAMPLES = 15 * SCALE  # per operation and mode (positive, negative)
STATELESS_BUDGET_S = 60.0 * SCALE
ENGINES = r"^/(admin/v1/(engines|models/)|v1/models)"  # the rest: identity objects
BATCH = r"^/v1/(files|batches)"  # uploads and batches: their own chains
EDGE = r"^/admin/v1/(edge/|alerts)"  # what a centre serves its edge nodes; alerts
ENGINE_SCENARIOS = 100 * SCALE
BATCH_SCENARIOS = 400 * SCALE
EDGE_SCENARIOS = 60 * SCALE
IDENTITY_SCENARIOS = 1200 * SCALE
SCENARIOS = ENGINE_SCENARIOS + BATCH_SCENARIOS + EDGE_SCENARIOS + IDENTITY_SCENARIOS
STEPS = 12  # deep enough for tenant -> principal -> key -> rotate -> rotate -> revoke
STATEFUL_BUDGET_S = 100.0 * SCALE


@pytest.fixture(scope="module")
def target(start_server: StartServer, stop_server,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[fz.Fuzz]:
    work: Path = tmp_path_factory.mktemp("fuzz")
    upstream = Standin("fuzz-upstream", work).start()
    config = work / "fuzz.yaml"
    config.write_text(yaml.safe_dump({"models": [
        # first: the link from GET /admin/v1/engines to its instances names data[0]
        {"id": POOL, "engine": "openai",
         "instances": [{"url": upstream.url, "name": "origin-7f3a9c"}]},
        {"id": MODEL, "engine": "llamacpp"},
    ]}))
    srv: ServerProcess = start_server("fuzz", args=["--config", str(config)], env={
        "AUTOGLM_DEFAULT_MAX_TOKENS": str(fz.MAX_TOKENS),
        # every call carries the admin key; anything else is the fuzzer's own doing
        "AUTOGLM_AUTH_FAILURE_LIMIT": "100000",
        # batches stay in progress (none of their lines runs), so that cancelling one is
        # reached too; running them is tests/e2e/test_e2e_batch.py's
        "AUTOGLM_BATCH_CONCURRENCY": "0",
    })
    try:
        yield fz.Fuzz(srv.base_url, dict(srv.auth), upstream.url, (MODEL, POOL))
        stop_server(srv)  # and it must still stop cleanly
    finally:
        upstream.kill()


def _failed(fuzz: fz.Fuzz) -> str:
    return "server errors:\n" + "\n".join(fuzz.failures)


def test_stateless_fuzzing_finds_no_server_error(target: fz.Fuzz) -> None:
    schema = target.schema()
    started = time.monotonic()
    fz.stateless(target, schema, STATELESS_EXAMPLES, deadline=started + STATELESS_BUDGET_S)
    assert not target.failures, _failed(target)
    calls = sum(sum(c.values()) for c in target.statuses.values())
    print(f"stateless: {calls} calls in {time.monotonic() - started:.1f} s")
    for label, statuses in sorted(target.statuses.items()):
        print(f"  {label}: {dict(sorted(statuses.items()))}")
    every = {op.label for op in (r.ok() for r in schema.get_all_operations())}
    assert every == set(target.statuses), every ^ set(target.statuses)  # each one called
    # the engines were reached, not just refused
    assert target.reached("POST /v1/chat/completions"), target.statuses
    assert target.reached("POST /v1/completions"), target.statuses


def test_stateful_fuzzing_reaches_every_route_with_real_ids(target: fz.Fuzz) -> None:
    target.statuses.clear()
    schema = target.schema()
    started = time.monotonic()
    # Four machines, as the ids of engines, of uploads and batches, of edge nodes and of
    # identity objects never meet: each gets its own scenarios instead of the cheap calls
    # of one crowding out the deep chains of another.
    for part, scenarios in ((schema.include(path_regex=ENGINES), ENGINE_SCENARIOS),
                            (schema.include(path_regex=BATCH), BATCH_SCENARIOS),
                            (schema.include(path_regex=EDGE), EDGE_SCENARIOS),
                            (schema.exclude(path_regex=ENGINES).exclude(path_regex=BATCH)
                             .exclude(path_regex=EDGE), IDENTITY_SCENARIOS)):
        deadline = time.monotonic() + STATEFUL_BUDGET_S * scenarios / SCENARIOS
        fz.stateful(target, fz.state_machine(target, part, deadline), scenarios, STEPS,
                    deadline)
    assert not target.failures, _failed(target)
    calls = sum(sum(c.values()) for c in target.statuses.values())
    print(f"stateful: {target.scenarios} scenarios ({target.restarts} restarts), {calls} "
          f"calls in {time.monotonic() - started:.1f} s")
    with_ids = [op.label for op in (r.ok() for r in schema.get_all_operations())
                if "{" in op.path]
    assert len(with_ids) >= 20, with_ids
    for label in sorted(target.statuses):
        print(f"  {label}: {dict(sorted(target.statuses[label].items()))}")
    unreached = {label: dict(target.statuses[label]) for label in with_ids
                 if not target.reached(label)}
    assert not unreached, f"never answered 2xx (status counts): {unreached}"
