"""Statistics and the printed report of ``bench/gateway.py``: medians over rounds,
paired differences and ratios, the goals, and the table."""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from typing import Any

PROXIES = ("bare", "gateway", "gateway_b")  # targets compared with direct
TARGET_ADDED_P50_MS = 0.35  # gateway p50 over direct, 1 connection, JSON
TARGET_BARE_RATIO = 0.75  # gateway / bare proxy requests/s, 16 connections, JSON
TARGET_B_RATIO = 0.7  # the same with limits on (the Redis issue's goal), --env-b

def med(xs: list[float]) -> float:
    return statistics.median(xs)


def summarize_target(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {
        "rps": med([x["rps"] for x in runs]),
        "p50_ms": med([x["p50_ms"] for x in runs]),
        "p99_ms": med([x["p99_ms"] for x in runs]),
        "errors": sum(x["non_2xx"] + x["socket_errors"] for x in runs),
        "cpu_us_per_req": med([x["cpu_us_per_req"] for x in runs]),
        "cpu_share": med([x["cpu_share"] for x in runs]),
        "standin_cpu_share": med([x["standin_cpu_share"] for x in runs]),
        "host_busy_cores": med([x["host"]["busy_cores"] for x in runs]),
        "host_steal_cores": med([x["host"]["steal_cores"] for x in runs]),
    }


def paired(rounds: list[dict[str, Any]], a: str, b: str,
           fn: Callable[[dict[str, Any], dict[str, Any]], float]) -> float:
    """Median over rounds of ``fn(run of a, run of b)``: runs that saw the same load."""
    return med([fn(r[a], r[b]) for r in rounds])


def added_over_direct(rounds: list[dict[str, Any]], who: str) -> dict[str, float]:
    """p50 and p99 of ``who`` minus direct's, median of per-round paired differences."""
    return {"p50_ms": paired(rounds, who, "direct", lambda x, d: x["p50_ms"] - d["p50_ms"]),
            "p99_ms": paired(rounds, who, "direct", lambda x, d: x["p99_ms"] - d["p99_ms"])}


def rps_ratio(rounds: list[dict[str, Any]], a: str, b: str) -> float:
    return paired(rounds, a, b, lambda x, y: x["rps"] / y["rps"])


def summarize(mode: str, conns: int, targets: tuple[str, ...],
              rounds: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"mode": mode, "connections": conns}
    for who in targets:
        out[who] = summarize_target([r[who] for r in rounds])
    compared = [who for who in PROXIES if who in targets and "direct" in targets]
    out["added"] = {who: added_over_direct(rounds, who) for who in compared}
    out["added_of_medians"] = {
        who: {q: out[who][q] - out["direct"][q] for q in ("p50_ms", "p99_ms")}
        for who in compared}
    out["rps_over_direct"] = {who: rps_ratio(rounds, who, "direct") for who in compared}
    both = "gateway" in targets and "bare" in targets
    out["gateway_over_bare_rps"] = rps_ratio(rounds, "gateway", "bare") if both else None
    if "gateway_b" in targets:  # the same gateway with --env-b settings, same rounds
        out["gateway_b_over_bare_rps"] = (rps_ratio(rounds, "gateway_b", "bare")
                                          if "bare" in targets else None)
        out["gateway_b_over_gateway_rps"] = (rps_ratio(rounds, "gateway_b", "gateway")
                                             if "gateway" in targets else None)
    out["rounds"] = rounds
    return out


def goal(name: str, limit: str, unit: str, needs: tuple[str, ...], targets: tuple[str, ...],
         value: Callable[[], float], ok: Callable[[float], bool],
         errors: Callable[[], int]) -> dict[str, Any]:
    """A pass/fail line; not measured (met None) when a needed target was left out."""
    out: dict[str, Any] = {"target": name, "limit": limit, "unit": unit}
    missing = [t for t in needs if t not in targets]
    if missing:
        return {**out, "value": None, "met": None, "note": f"needs --targets {','.join(needs)}"}
    v = value()
    return {**out, "value": round(v, 4), "met": ok(v) and errors() == 0}


def judge(results: list[dict[str, Any]], targets: tuple[str, ...]) -> list[dict[str, Any]]:
    by = {(r["mode"], r["connections"]): r for r in results}
    c1, c16 = by[("json", 1)], by[("json", 16)]
    goals = [
        goal("gateway / bare proxy requests/s, 16 connections, JSON",
             f">= {TARGET_BARE_RATIO}", "x", ("bare", "gateway"), targets,
             lambda: c16["gateway_over_bare_rps"], lambda v: v >= TARGET_BARE_RATIO,
             lambda: c16["gateway"]["errors"] + c16["bare"]["errors"]),
        goal("gateway p50 added over direct, 1 connection, JSON",
             f"<= {TARGET_ADDED_P50_MS} ms", "ms", ("direct", "gateway"), targets,
             lambda: c1["added"]["gateway"]["p50_ms"], lambda v: v <= TARGET_ADDED_P50_MS,
             lambda: c1["gateway"]["errors"] + c1["direct"]["errors"]),
    ]
    if "gateway_b" in targets:
        goals.append(goal("gateway with --env-b / bare proxy requests/s, 16 connections, JSON",
                          f">= {TARGET_B_RATIO}", "x", ("bare", "gateway_b"), targets,
                          lambda: c16["gateway_b_over_bare_rps"],
                          lambda v: v >= TARGET_B_RATIO,
                          lambda: c16["gateway_b"]["errors"] + c16["bare"]["errors"]))
    return goals


TABLE_COLUMNS = ("mode", "conns", "target", "rps", "p50", "p99", "added p50", "added p99",
                 "rps/direct", "gw/bare", "CPU us/req", "CPU", "host busy", "errors")
LABELS = {"direct": "direct", "bare": "bare proxy", "gateway": "gateway",
          "gateway_b": "gateway (env-b)"}


def table_row(r: dict[str, Any], who: str) -> list[str]:
    s = r[who]
    added = r["added"].get(who)
    ratio = r["rps_over_direct"].get(who)
    gw_bare = {"gateway": r["gateway_over_bare_rps"],
               "gateway_b": r.get("gateway_b_over_bare_rps")}.get(who)
    return [r["mode"], str(r["connections"]), LABELS[who],
            f"{s['rps']:.0f}", f"{s['p50_ms']:.3f}", f"{s['p99_ms']:.3f}",
            f"{added['p50_ms']:+.3f}" if added else "", f"{added['p99_ms']:+.3f}" if added else "",
            f"{ratio:.1%}" if ratio is not None else "",
            f"{gw_bare:.2f}" if gw_bare is not None else "",
            f"{s['cpu_us_per_req']:.0f}", f"{s['cpu_share']:.0%}",
            f"{s['host_busy_cores']:.2f}/{os.cpu_count()}", str(s["errors"])]


def checks_line(checks: dict[str, Any]) -> str:
    line = f"checks: stand-in served {checks['standin_stats'].get('requests')} completions"
    log = checks.get("gateway_access_log")
    if log is None:
        return line
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(log["by_status"].items()))
    return (f"{line}; gateway access log has {log['chat_lines']} chat lines (by status "
            f"{statuses}; 499 = wrk closed a connection with a request in flight at the end "
            f"of a run); wrk counted {checks['wrk_counted_gateway_requests']} measured "
            f"gateway requests (plus warm-ups)")


def verdict(tg: dict[str, Any]) -> str:
    if tg["met"] is None:
        return f"[yellow]NOT MEASURED[/] ({tg['note']})"
    return "[bold green]MET[/]" if tg["met"] else "[bold red]MISSED[/]"


def print_report(results: list[dict[str, Any]], targets: tuple[str, ...],
                 goals: list[dict[str, Any]], checks: dict[str, Any], wall_s: float) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=max(Console().width, 150))
    t = Table(title="Gateway overhead (medians over rounds; latency in ms)")
    for col in TABLE_COLUMNS:
        t.add_column(col, justify="left" if col in ("mode", "target") else "right")
    for r in results:
        for who in targets:
            t.add_row(*table_row(r, who))
        t.add_section()
    con.print(t)
    con.print("added = median over rounds of (target - direct); rps/direct and gw/bare = "
              "median over rounds of the requests/s ratio; CPU = CPU time of the server wrk "
              "talks to (its whole process group; the stand-in for direct) per request and "
              "per second of wall time (100% = one core); host busy = cores busy "
              "machine-wide during the run (wrk + stand-in + proxy + anything else)")
    con.print(checks_line(checks))
    for r in results:
        if r.get("gateway_b_over_gateway_rps") is not None:
            con.print(f"gateway (env-b) / gateway requests/s, {r['mode']} c={r['connections']}: "
                      f"{r['gateway_b_over_gateway_rps']:.3f}")
    for tg in goals:
        value = "-" if tg["value"] is None else f"{tg['value']} {tg['unit']}"
        con.print(f"target: {tg['target']} {tg['limit']}: {value} -> {verdict(tg)}")
    con.print(f"total runtime {wall_s:.0f} s")


# --------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------
