"""The stages of every inference request, in order, in one place.

Each stage is a module with a small contract (``pipeline/stage.py``). A new stage takes
its place in this list: a module and one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autoglm.api.metrics import Metrics
from autoglm.pipeline.stage import EngineStage, Stage
from autoglm.pipeline.stages.accounting import Accounting
from autoglm.pipeline.stages.admission import Admission
from autoglm.pipeline.stages.alerts import Alerts
from autoglm.pipeline.stages.audit import Audit
from autoglm.pipeline.stages.authenticate import Authenticate
from autoglm.pipeline.stages.authorize import Authorize
from autoglm.pipeline.stages.cache import Cache
from autoglm.pipeline.stages.guard import GuardInput, GuardOutput, PiiGuards
from autoglm.pipeline.stages.keep_text import KeepAnswer, KeepPrompt
from autoglm.pipeline.stages.limits import Limit
from autoglm.pipeline.stages.prompt_log import PromptLog
from autoglm.pipeline.stages.validate import Validate


@dataclass(frozen=True)
class StageDeps:
    """What the stages are built from (one app's objects)."""

    auth: Any  # security.auth.Authenticator
    authz: Any  # security.access.Authorizer
    engines: dict[str, Any]
    metrics: Metrics
    log_prompts: bool
    guards: PiiGuards
    audit: Any  # audit.AuditLog
    text_tenants: frozenset[str] = frozenset()  # tenants whose texts their records keep
    meter: Any = None  # limits.Meter; None: no limits stage
    default_max_tokens: int = 512
    batch_share: float = 0.8  # of each limit, for batch lines
    cache: Any = None  # cache.ResponseCache; None: no cache stage
    alerts: Any = None  # alerts.Feed; None: no alerts stage


def build_stages(deps: StageDeps, extra: dict[str, list[Stage]] | None = None) -> list[Stage]:
    """The ordered stage list. ``extra`` inserts stages before the named stage (tests,
    embedders): ``{"engine": [MyStage()]}``."""
    stages: list[Stage] = [
        Authenticate(deps.auth),
        Authorize(deps.authz, deps.engines),
        *([Limit(deps.meter, deps.default_max_tokens, deps.batch_share)]
          if deps.meter is not None else []),
        Validate(),
        GuardInput(deps.guards),
        *([KeepPrompt(deps.text_tenants)] if deps.text_tenants else []),
        *([PromptLog()] if deps.log_prompts else []),
        *([Cache(deps.cache, deps.guards)] if deps.cache is not None else []),
        Admission(),
        EngineStage(),
        GuardOutput(deps.guards),
        *([KeepAnswer()] if deps.text_tenants else []),
        Accounting(deps.metrics),
        *([Alerts(deps.alerts)] if deps.alerts is not None else []),
        Audit(deps.audit),
    ]
    for before_name, inserted in (extra or {}).items():
        names = [s.name for s in stages]
        if before_name not in names:
            raise ValueError(f"no stage named {before_name!r}; stages: {', '.join(names)}")
        at = names.index(before_name)
        stages[at:at] = inserted
    return stages
