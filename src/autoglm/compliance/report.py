"""The report: every control of the catalogue with its status, evidence and remedy."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from autoglm.compliance import catalogue as cat
from autoglm.compliance.checks import CHECKS, STATUSES
from autoglm.compliance.evidence import collect
from autoglm.settings import Settings
from autoglm.timefmt import stamp

FORMAT = "autoglm-compliance-report/1"
STATEMENT = (
    "This report supports a compliance assessment; it does not replace one. It reads the "
    "technical controls this software can evidence from the installation as it was when the "
    "report was made. Controls marked 'manual' need an attestation by the operator, and a "
    "qualified assessor (for MLPS 2.0, an accredited testing body) decides compliance.")
LABELS = {"met": "met", "not_met": "not met", "not_applicable": "not applicable",
          "manual": "needs a manual attestation"}


def build(settings: Settings, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    catalogue = cat.load()
    evidence = collect(settings, now)
    params = catalogue.parameters
    controls = []
    for c in catalogue.controls:
        finding = CHECKS[c.check](evidence, params)
        remedy = None
        if finding.status in ("not_met", "manual"):
            remedy = finding.remedy or c.remedy
        controls.append({"id": c.id, "framework": c.framework, "clause": c.clause,
                         "area": c.area, "title": c.title, "requirement": c.requirement,
                         "status": finding.status, "evidence": finding.evidence,
                         "remedy": remedy})
    summary: dict[str, dict[str, int]] = {}
    for key in ("all", *catalogue.frameworks):
        rows = [c for c in controls if key in ("all", c["framework"])]
        summary[key] = {s: sum(1 for c in rows if c["status"] == s) for s in STATUSES}
    return {"format": FORMAT, "generated_at": stamp(now), "statement": STATEMENT,
            "installation": evidence["installation"], "frameworks": catalogue.frameworks,
            "parameters": params, "summary": summary, "controls": controls,
            "evidence": evidence}
