"""Schemathesis against a live server, bounded: what ``test_e2e_fuzz.py`` runs.

``Fuzz`` makes every call (both phases go through it): it keeps the requests on this
machine and cheap, counts the answers per operation, and records every check failure
itself, so a 5xx is reported even when Hypothesis cannot replay it (a live server's
state moves on between runs).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import hypothesis.reporting
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis.errors import FlakyStrategyDefinition, Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

CHECKS = [not_a_server_error]
MAX_TOKENS = 4  # an answer costs a few decode steps, streamed or not
REQUEST_TIMEOUT_S = 30.0
INFERENCE = ("/v1/chat/completions", "/v1/completions")
BATCH_LINE = ('{"custom_id":"c%d","method":"POST","url":"/v1/chat/completions","body":'
              '{"model":"%s","max_tokens":%d,"messages":[{"role":"user","content":"hi"}]}}\n')


class BudgetSpent(Exception):
    """The phase's time is up: raised before a new scenario starts."""


@dataclass
class Fuzz:
    base_url: str
    headers: dict[str, str]
    upstream_url: str  # where every instance the fuzzer adds points: a stand-in on loopback
    models: Sequence[str]  # served models, swapped into inference bodies
    statuses: defaultdict[str, Counter[int]] = field(
        default_factory=lambda: defaultdict(Counter))
    files: list[str] = field(default_factory=list)  # batch input files it uploaded
    failures: list[str] = field(default_factory=list)
    scenarios: int = 0
    restarts: int = 0  # fresh Hypothesis runs after FlakyStrategyDefinition
    session: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self) -> None:
        self.session.trust_env = False  # no proxy from the environment for loopback

    def schema(self) -> Any:
        config = schemathesis.Config.from_dict({
            "headers": self.headers,
            # only the links /openapi.json declares: the test is that they are enough
            "phases": {"stateful": {"inference": {"algorithms": []}}},
        })
        return schemathesis.openapi.from_url(f"{self.base_url}/openapi.json", config=config,
                                             timeout=REQUEST_TIMEOUT_S)

    @property
    def call_kwargs(self) -> dict[str, Any]:
        return {"session": self.session, "headers": self.headers,
                "timeout": REQUEST_TIMEOUT_S}

    def confine(self, case: Any) -> None:
        """Keep a generated request on this machine and cheap.

        - An instance the fuzzer adds points at the loopback stand-in, whatever URL was
          generated: the gateway would otherwise connect wherever it says (and this test
          sends traffic to this machine only).
        - A batch input file is often swapped for a valid one (its lines ask for
          ``MAX_TOKENS`` tokens), and a batch's input file for one uploaded before, so that
          files and batches are made, listed, read, cancelled, not just refused.
        - Inference asks for at most ``MAX_TOKENS`` tokens (the server's default is that
          too), so streaming stays in and stays bounded; and a generated model name is
          often swapped for a served one, so that the engines are reached, not just 404.
        """
        body = case.body
        if not isinstance(body, dict):
            return
        path = case.operation.path
        if path.endswith("/instances") and isinstance(body.get("url"), str):
            body["url"] = self.upstream_url
        if path == "/v1/files" and body.get("purpose") == "batch" and "file" in body:
            upload = body["file"]
            if len(upload if isinstance(upload, (bytes, str)) else b"") % 2 == 0:
                body["file"] = "".join(BATCH_LINE % (i, self.models[0], MAX_TOKENS)
                                       for i in range(2)).encode()
        if path == "/v1/batches" and isinstance(body.get("input_file_id"), str) and self.files:
            choice = len(body["input_file_id"]) % (len(self.files) + 1)
            if choice < len(self.files):
                body["input_file_id"] = self.files[choice]
        if path in INFERENCE:
            for name in ("max_tokens", "max_completion_tokens"):
                value = body.get(name)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    body[name] = min(value, MAX_TOKENS)
            model = body.get("model")
            if isinstance(model, str):
                choice = len(model) % (len(self.models) + 1)
                if choice < len(self.models):
                    body["model"] = self.models[choice]

    def record(self, case: Any, response: Any) -> None:
        self.statuses[case.operation.label][response.status_code] += 1
        if case.operation.label == "POST /v1/files" and response.status_code == 200:
            self.files.append(response.json()["id"])

    def validate(self, case: Any, response: Any, **kw: Any) -> None:
        try:
            case.validate_response(response, checks=CHECKS, **kw)
        except BaseExceptionGroup:  # what a failed check raises
            self.failures.append(
                f"{case.operation.label} -> {response.status_code}: {response.text[:300]}\n"
                f"  {case.as_curl_command(headers=self.headers)}")
            raise

    def call(self, case: Any) -> None:
        self.confine(case)
        response = case.call(**self.call_kwargs)
        self.record(case, response)
        self.validate(case, response)

    def reached(self, label: str) -> bool:
        return any(200 <= status < 300 for status in self.statuses[label])


def _settings(examples: int, **kw: Any) -> hypothesis.settings:
    return hypothesis.settings(
        max_examples=examples, deadline=None, database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: a live server moves on
        suppress_health_check=list(HealthCheck), print_blob=False, **kw)


def stateless(fuzz: Fuzz, schema: Any, examples: int, deadline: float) -> None:
    """Every operation alone, ``examples`` positive and ``examples`` negative cases each
    (negative: data the schema forbids), with generated (mostly unknown) ids. Past the
    deadline, each operation left gets one case of each kind."""
    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            budget = examples if time.monotonic() < deadline else 1

            @hypothesis.given(case=op.as_strategy(generation_mode=mode, headers=fuzz.headers))
            @_settings(budget)
            def run(case: Any) -> None:
                fuzz.call(case)

            try:
                with hypothesis.reporting.with_reporter(lambda _: None):  # ours is enough
                    run()
            except Unsatisfiable:
                if mode is GenerationMode.POSITIVE:
                    raise
                # nothing of this operation can be made invalid (no body, string params)
            except (Exception, BaseExceptionGroup):  # a check failure is a group
                if not fuzz.failures:
                    raise
                return  # recorded: the test reports it


def state_machine(fuzz: Fuzz, schema: Any, deadline: float) -> type:
    """The schema's state machine, calling through ``fuzz``: scenarios that follow the
    links of /openapi.json from a response to the next request."""
    base: type = schema.as_state_machine()

    class Fuzzing(base):  # type: ignore[misc, valid-type]
        def setup(self) -> None:
            if time.monotonic() > deadline:
                raise BudgetSpent("stateful phase out of time")
            fuzz.scenarios += 1

        def before_call(self, case: Any) -> None:
            fuzz.confine(case)

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return fuzz.call_kwargs

        def after_call(self, response: Any, case: Any) -> None:
            super().after_call(response, case)
            fuzz.record(case, response)

        def validate_response(self, response: Any, case: Any,
                              additional_checks: Any = None, **kw: Any) -> None:
            fuzz.validate(case, response, transport_kwargs=kw or None, recorder=self.recorder)

    return Fuzzing


def _inconsistent_replay(exc: BaseException) -> bool:
    """Hypothesis's own assertion that a replay drew differently (as FlakyStrategyDefinition),
    alone or as all that a group holds (Hypothesis wraps it in a FlakyFailure when the
    replay that drew differently also failed)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_inconsistent_replay(e) for e in exc.exceptions)
    if isinstance(exc, FlakyStrategyDefinition):
        return True
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return isinstance(exc, AssertionError) and tb is not None and (
        tb.tb_frame.f_globals.get("__name__") == "hypothesis.internal.conjecture.datatree")


def stateful(fuzz: Fuzz, machine: type, scenarios: int, steps: int, deadline: float) -> None:
    """Run ``scenarios`` scenarios of at most ``steps`` calls, or until ``deadline``.

    Hypothesis expects a test to behave the same when it replays a prefix of choices; a
    live server does not (a name taken, an id revoked), and Hypothesis then stops with
    FlakyStrategyDefinition. That is no finding: a fresh run goes on from there.
    """
    goal = fuzz.scenarios + scenarios
    while fuzz.scenarios < goal and time.monotonic() < deadline and not fuzz.failures:
        try:
            machine.run(settings=_settings(goal - fuzz.scenarios, stateful_step_count=steps))
        except BudgetSpent:
            return
        except FlakyStrategyDefinition:
            fuzz.restarts += 1
        except (Exception, BaseExceptionGroup) as exc:
            if fuzz.failures:
                return  # recorded: the test reports it
            if not _inconsistent_replay(exc):
                raise
            fuzz.restarts += 1
