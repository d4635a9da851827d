"""Cost of authentication plus authorization on a cache hit (the hot path of every request).

    .venv/bin/python bench/auth.py [--n 20000] [--out bench/results/auth.json]

Creates a SQLite control-plane database in a temp directory with a tenant, a project and
a member with a key, warms the caches, then times per request: ``authenticate`` (header
parsing, keyed hash, cache lookup, expiry check) and ``require_model`` (project from the
``OpenAI-Project`` header, policy decision with key narrowing and the project's model
list). Prints p50/p99 in microseconds for each and both, and writes JSON.
The identity issue's target: authentication plus authorization <= 50 us p50.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from autoglm.security.access import Authorizer
from autoglm.security.auth import Authenticator
from autoglm.security.keystore import KeyService
from autoglm.security.policy import PolicyStore
from autoglm.store.db import Database
from autoglm.store.models import Principal, Project, RoleBinding, Tenant


async def measure(n: int) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{Path(tmp) / 'cp.db'}")
        db.upgrade()
        with db.session() as s, s.begin():
            t = Tenant(name="bank")
            s.add(t)
            s.flush()
            p = Project(tenant_id=t.id, name="risk", allowed_models=["m1"])
            who = Principal(tenant_id=t.id, name="alice")
            s.add_all([p, who])
            s.flush()
            s.add(RoleBinding(principal_id=who.id, role="member", tenant_id=t.id,
                              project_id=p.id))
            project, principal = p.id, who.id
        svc = KeyService(db, b"p" * 32, cache_ttl_s=3600)
        secret, _ = svc.create(principal, models=["m1"])
        auth = Authenticator(svc)
        authz = Authorizer(PolicyStore(None), db, cache_ttl_s=3600)
        header = f"Bearer {secret}"
        ident = await auth.authenticate(header)  # misses: load the key and the project
        await authz.require_model(ident, "m1", project)
        both, authn, authzn = [], [], []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            ident = await auth.authenticate(header)
            t1 = time.perf_counter_ns()
            await authz.require_model(ident, "m1", project)
            t2 = time.perf_counter_ns()
            authn.append((t1 - t0) / 1000)
            authzn.append((t2 - t1) / 1000)
            both.append((t2 - t0) / 1000)
        db.close()
    return {"authenticate": _stats(authn), "authorize": _stats(authzn), "both": _stats(both)}


def _stats(samples: list[float]) -> dict[str, float]:
    samples.sort()
    return {"n": len(samples), "p50_us": statistics.median(samples),
            "p99_us": samples[int(len(samples) * 0.99) - 1], "mean_us": statistics.fmean(samples)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "auth.json")
    args = p.parse_args()
    result = asyncio.run(measure(args.n))
    for name, r in result.items():
        print(f"{name:13s} p50 {r['p50_us']:6.1f} us  p99 {r['p99_us']:6.1f} us  "
              f"mean {r['mean_us']:6.1f} us  ({r['n']} calls, cache hits)")
    verdict = "MET" if result["both"]["p50_us"] <= 50 else "MISSED"
    print(f"target: authentication + authorization <= 50 us p50 -> {verdict}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
