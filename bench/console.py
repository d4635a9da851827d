"""First load of each web console page, with 10,000 audit records in the chain.

    .venv/bin/python bench/console.py [--records 10000] [--rounds 7]
                                      [--out bench/results/console.json]

The control plane is seeded first through its own code (``Directory`` for a tenant, a
project and a principal; ``AuditLog.append``, the one append point, for the records, so
the usage rollup is kept as in service): 70 % inference records spread over the last 24
hours across 3 tenants, 6 keys and 2 models, the rest admin acts. Then the real server
(``autoglm serve`` with the bundled model) is started and each page is loaded, signed in
as the platform admin:

- ``http_ms``: a new connection, the page's HTML, then its stylesheet and script (what a
  browser fetches for a first load with an empty cache), one after the other;
- ``browser_ms`` (when Debian's Chromium is at /usr/bin/chromium and Playwright is
  installed): a new browser context per load (empty cache), navigation start to the end
  of the load event (``PerformanceNavigationTiming.loadEventEnd``).

Medians over ``--rounds`` loads (after one warm-up load of each page), against a goal
of 200 ms. The chain check (``/console/audit/verify``, on request only) is timed apart.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autoglm.audit import AuditLog, Record
from autoglm.settings import Settings
from autoglm.store.db import Database, database_url
from autoglm.store.directory import Act, Directory
from tests.e2e.support import ADMIN_KEY, MODEL, ServerProcess

GOAL_MS = 200.0
CHROMIUM = Path("/usr/bin/chromium")
CSRF = re.compile(r'name="csrf" value="([^"]*)"')


def seed(data_dir: Path, records: int) -> dict[str, str]:
    settings = Settings(data_dir=data_dir, admin_key=ADMIN_KEY)
    data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(database_url(settings))
    db.upgrade()
    audit = AuditLog.from_settings(settings, db)
    try:
        directory = Directory(db, audit)
        act = Act("bench", None)
        tenant = directory.create_tenant(act, "bench-bank")
        directory.grant_models(act, tenant.id, [MODEL])
        project = directory.create_project(act, tenant.id, "risk", [MODEL])
        principal = directory.create_principal(act, tenant.id, "alice", "user")
        rng = random.Random(7)
        now = datetime.now(UTC)
        tenants = [tenant.id, "ten_bench0000000002", "ten_bench0000000003"]
        keys = [f"key_bench{i:011d}" for i in range(6)]
        batch: list[Record] = []
        for i in range(records):
            ts = now - timedelta(seconds=rng.uniform(0, 24 * 3600))
            if rng.random() < 0.7:
                k = rng.randrange(6)
                batch.append(Record(
                    action="inference", status=200, actor=f"prn_bench{k:011d}", key_id=keys[k],
                    tenant_id=tenants[k % 3], project_id=project.id if k % 3 == 0 else None,
                    resource=MODEL, model=MODEL if k % 2 else "qwen-bench",
                    prompt_tokens=rng.randrange(10, 400), completion_tokens=rng.randrange(5, 300),
                    latency_ms=rng.uniform(20, 900), ts=ts))
            else:
                batch.append(Record(action=rng.choice(["key.create", "project.update",
                                                       "tenant.read", "authenticate"]),
                                    decision=rng.choice(["allow", "allow", "deny"]), status=200,
                                    actor="prn_platform_admin", tenant_id=rng.choice(tenants),
                                    resource=f"obj_{i}", ts=ts))
            if len(batch) == 1000:
                audit.append(batch)
                batch = []
        audit.append(batch)
        return {"tenant": tenant.id, "project": project.id, "principal": principal.id}
    finally:
        audit.close()
        db.close()


def sign_in(http: httpx.Client) -> None:
    page = http.get("/console/login")
    r = http.post("/console/login", data={"key": ADMIN_KEY, "next": "/console",
                                          "csrf": CSRF.search(page.text).group(1)})
    if r.status_code != 303:
        raise SystemExit(f"sign-in failed: {r.status_code} {r.text[:200]}")


def http_load(srv: ServerProcess, cookies: httpx.Cookies, path: str) -> float:
    with srv.client(timeout=30, cookies=cookies) as http:  # a new connection each time
        started = time.perf_counter()
        r = http.get(path)
        if r.status_code != 200:
            raise SystemExit(f"{path}: {r.status_code} {r.text[:200]}")
        http.get("/console/static/console.css")
        http.get("/console/static/console.js")
        return (time.perf_counter() - started) * 1000


async def browser_loads(base: str, cookie: str, pages: list[str], rounds: int
                        ) -> dict[str, list[float]]:
    from playwright.async_api import async_playwright

    out: dict[str, list[float]] = {p: [] for p in pages}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            for round_ in range(rounds + 1):
                for path in pages:
                    ctx = await browser.new_context()
                    await ctx.add_cookies([{"name": "autoglm_session", "value": cookie,
                                            "url": base + "/console"}])
                    page = await ctx.new_page()
                    await page.goto(base + path, wait_until="load")
                    ms = await page.evaluate(
                        "() => performance.getEntriesByType('navigation')[0].loadEventEnd")
                    if round_:  # the first round warms up
                        out[path].append(float(ms))
                    await ctx.close()
        finally:
            await browser.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "console.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="autoglm-console-bench-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        ids = seed(work / "data", args.records)
        print(f"seeded {args.records} audit records in {time.perf_counter() - started:.1f} s")
        srv = ServerProcess(work, name="console-bench")
        srv.start()
        try:
            pages = ["/console", "/console/tenants", f"/console/tenants/{ids['tenant']}",
                     f"/console/projects/{ids['project']}",
                     f"/console/principals/{ids['principal']}", "/console/models",
                     "/console/usage", "/console/usage?bucket=day&since=30d&group=key",
                     "/console/audit", "/console/audit?decision=deny", "/console/alerts",
                     "/console/playground"]
            with srv.client(timeout=30) as http:
                sign_in(http)
                cookies = http.cookies
            results: dict[str, dict[str, float | None]] = {}
            for path in pages:
                http_load(srv, cookies, path)  # warm-up
                times = [http_load(srv, cookies, path) for _ in range(args.rounds)]
                results[path] = {"http_ms": round(statistics.median(times), 1)}
            with srv.client(timeout=120, cookies=cookies) as http:
                t0 = time.perf_counter()
                verified = http.get("/console/audit/verify")
                verify_ms = (time.perf_counter() - t0) * 1000
                intact = "The chain is intact" in verified.text
            browser = None
            if CHROMIUM.exists():
                try:
                    browser = asyncio.run(browser_loads(
                        srv.base_url, cookies.get("autoglm_session"), pages, args.rounds))
                except ImportError:
                    browser = None
            for path in pages:
                results[path]["browser_ms"] = (round(statistics.median(browser[path]), 1)
                                               if browser else None)
        finally:
            srv.stop(check=False)
    worst = max(max(v for v in r.values() if v is not None) for r in results.values())
    doc = {"records": args.records, "rounds": args.rounds, "goal_ms": GOAL_MS,
           "pages": results, "verify_ms": round(verify_ms, 1), "verify_intact": intact,
           "worst_ms": worst, "met": worst < GOAL_MS}
    print(f"{'page':<58} {'http_ms':>8} {'browser_ms':>10}")
    for path, r in results.items():
        b = r["browser_ms"]
        print(f"{path:<58} {r['http_ms']:>8.1f} {b if b is not None else '-':>10}")
    print(f"chain check of {args.records} records: {verify_ms:.0f} ms (intact: {intact})")
    print(f"worst first load {worst:.1f} ms; goal {GOAL_MS:.0f} ms: "
          f"{'met' if doc['met'] else 'NOT met'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
