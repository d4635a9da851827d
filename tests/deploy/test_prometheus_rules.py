"""``deploy/prometheus/alerts.yml``: Prometheus alerting rules whose every metric is one the
app exports, read from the ``/metrics`` of a started app (no engine needed: every family is
described even before it has samples). Without ``promtool`` the rules are checked for
their structure, their durations, balanced brackets and their label matchers (against
the labels of the series that exist); with it, ``promtool check rules`` too."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import yaml
from asgi_lifespan import LifespanManager

from autoglm.api.app import create_app
from tests.conftest import ADMIN_KEY, make_settings
from tests.deploy.support import DEPLOY

RULES = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS_OWN = {"up"}  # series Prometheus makes itself
SEVERITIES = {"info", "warning", "critical"}
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
            "group_right", "bool", "offset"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
            "summary": ("_sum", "_count"), "gauge": ("",), "untyped": ("",)}


def load_rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    assert set(doc) == {"groups"}
    out = []
    names = [g["name"] for g in doc["groups"]]
    assert len(names) == len(set(names))
    for group in doc["groups"]:
        assert set(group) <= {"name", "rules", "interval"} and group["rules"]
        out += group["rules"]
    return out


def selectors(expr: str) -> tuple[set[str], list[tuple[str, set[str]]]]:
    """The metric names an expression reads, and each selector's label names."""
    text = re.sub(r'"(\\.|[^"\\])*"|\'(\\.|[^\'\\])*\'', '""', expr)
    matched = [(m.group(1), set(re.findall(rf"({NAME})\s*(?:=~|!~|!=|=)", m.group(2))))
               for m in re.finditer(rf"({NAME})\s*\{{([^}}]*)\}}", text)]
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = {m.group(1) for m in re.finditer(rf"(?<![\w.:])({NAME})(?![\w:])(?!\s*\()",
                                             text)}
    return names - KEYWORDS, matched


@pytest.fixture(scope="module")
async def exported(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict]:
    """Sample name -> label names seen (empty while it has no series) of a started app."""
    app = create_app(make_settings(tmp_path_factory.mktemp("rules")), engines={})
    async with (LifespanManager(app, startup_timeout=60, shutdown_timeout=30),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                  base_url="http://test") as client):
        r = await client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert r.status_code == 200, r.text
    out: dict[str, set[str]] = {}
    for line in r.text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split()
            for suffix in SUFFIXES[kind]:
                out.setdefault(family + suffix if not family.endswith(suffix) else family,
                               set())
        elif line and not line.startswith("#"):
            name, _, rest = line.partition("{")
            name = name.split()[0]
            labels = set(re.findall(rf"({NAME})=\"", rest)) if rest else set()
            out.setdefault(name, set()).update(labels)
    yield out


def test_every_rule_is_complete() -> None:
    rules = load_rules()
    assert len(rules) >= 8
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
        assert re.match(r"^AutoGLM[A-Z][A-Za-z]+$", rule["alert"]), rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        if "for" in rule:
            assert DURATION.match(rule["for"]), rule
        expr = rule["expr"]
        for open_, close in ("()", "[]", "{}"):
            assert expr.count(open_) == expr.count(close), (rule["alert"], open_)
        for rng in re.findall(r"\[([^\]]*)\]", expr):
            assert DURATION.match(rng), (rule["alert"], rng)


def test_every_metric_in_the_rules_is_exported(exported: dict) -> None:
    unknown, bad_labels = [], []
    read: set[str] = set()
    for rule in load_rules():
        names, matched = selectors(rule["expr"])
        assert names, rule["alert"]
        read |= names
        unknown += [(rule["alert"], n) for n in sorted(names - PROMETHEUS_OWN - set(exported))]
        for name, labels in matched:
            seen = exported.get(name)
            if seen:  # a series exists: its labels are known
                bad_labels += [(rule["alert"], name, lab) for lab in labels - seen]
    assert unknown == []
    assert bad_labels == []
    # the usage alerts' own series exist from the start
    assert {"autoglm_alerts_total", "autoglm_alert_webhook_total"} <= read
    assert exported["autoglm_alerts_total"] == {"scope", "signal"}


def test_the_expression_reader_finds_metrics_not_functions_or_labels() -> None:
    names, matched = selectors('histogram_quantile(0.95, sum by (le, model) (rate('
                               'x_bucket{model=~"a|b", route!="/v1"}[5m]))) > 2 * y and '
                               'on (model) z offset 5m')
    assert names == {"x_bucket", "y", "z"}
    assert matched == [("x_bucket", {"model", "route"})]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_rules() -> None:
    out = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_readme_names_the_rules_file() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert "deploy/prometheus/alerts.yml" in readme
