"""Run every preflight check at once, each bounded in time, results in a fixed order.

Each check sets its own timeouts (a database connect, an SNTP query, a subprocess); the
runner is the backstop: a check still running at the deadline is reported as a warning
and left behind in a daemon thread, so ``autoglm doctor`` never hangs on one probe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from autoglm.ops.doctor.result import Result, failed, warned
from autoglm.settings import Settings

DEFAULT_NTP_SERVER = "pool.ntp.org"


@dataclass(frozen=True)
class Context:
    """What the checks look at: the effective settings and the doctor's own options."""

    settings: Settings
    ntp_server: str = DEFAULT_NTP_SERVER  # "" skips the clock check
    ntp_timeout_s: float = 1.5
    full_verify: bool = False  # re-hash every registered model's bytes (slow)
    service_timeout_s: float = 3.0  # database and Redis connects


Check = Callable[[Context], "Result | Sequence[Result]"]


def _checks() -> list[tuple[str, Check]]:
    from autoglm.ops.doctor import gpu, models, network, services, storage, system, tls

    return [
        ("system.python", system.python_platform),
        ("system.cpu", system.cpu_features),
        ("system.memory", models.memory),
        ("system.limits", system.limits),
        ("kernel", system.kernel),
        ("storage.data_dir", storage.data_dir),
        ("network.ports", network.ports),
        ("network.clock", network.clock),
        ("services.database", services.database),
        ("services.redis", services.redis),
        ("tls.certificate", tls.certificate),
        ("models", models.models),
        ("gpu", gpu.gpu),
    ]


def _run_one(check_id: str, fn: Check, ctx: Context, out: dict[str, Any]) -> None:
    try:
        found = fn(ctx)
        out["results"] = [found] if isinstance(found, Result) else list(found)
    except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        out["results"] = [failed(check_id, f"the check itself failed: {type(exc).__name__}: "
                                 f"{reason}", "report this as an Open-AutoGLM bug, with "
                                 "`autoglm doctor --json`")]


def run_checks(ctx: Context, *, deadline_s: float = 20.0,
               checks: list[tuple[str, Check]] | None = None) -> list[Result]:
    """Every check, concurrently; the results in the order the checks are listed."""
    todo = checks if checks is not None else _checks()
    slots: list[dict[str, Any]] = [{} for _ in todo]
    threads = []
    for (check_id, fn), slot in zip(todo, slots):
        t = threading.Thread(target=_run_one, args=(check_id, fn, ctx, slot),
                             name=f"doctor-{check_id}", daemon=True)
        t.start()
        threads.append(t)
    end = time.monotonic() + deadline_s
    results: list[Result] = []
    for (check_id, _fn), slot, t in zip(todo, slots, threads):
        t.join(max(0.0, end - time.monotonic()))
        if "results" not in slot:
            results.append(warned(check_id, f"did not finish within {deadline_s:g} s",
                                  "run `autoglm doctor` again; if it recurs, find what hangs "
                                  "(a DNS lookup, a mount, a stuck service)"))
            continue
        results.extend(slot["results"])
    return results


def summary(results: list[Result]) -> dict[str, int]:
    counts = {"pass": 0, "warn": 0, "fail": 0, "skip": 0}
    for r in results:
        counts[r.status] += 1
    return counts
