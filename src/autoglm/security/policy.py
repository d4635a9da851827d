"""Authorization: the one place that decides whether an identity may do an action.

The policy (YAML; the built-in ``default_policy.yaml`` unless ``policy_file`` is set)
maps role x action x scope, deny by default. ``authorize`` combines it with:
- the binding's own scope (a tenant binding covers its tenant only);
- the key's narrowing (actions, projects, models it was limited to);
- the tenant's model grant and the project's model list (which narrows it) for inference.

``PolicyStore`` reloads the file when it changes: a valid file replaces the policy at
once; an invalid one is refused with a log line and the last good policy stays; a
removed file keeps the last good policy too. No window exists where an invalid file
applies.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from autoglm.store.models import ROLES

log = logging.getLogger("autoglm.policy")

DEFAULT_POLICY = Path(__file__).with_name("default_policy.yaml")

Scope = Literal["platform", "tenant", "project"]


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    actions: list[str] = Field(min_length=1)
    scope: Scope


class PolicyDoc(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    version: int  # strict: `version: true` is not 1

    @field_validator("version")
    @classmethod
    def _version_one(cls, value: int) -> int:
        if value != 1:
            raise ValueError("the only policy version is 1")
        return value
    roles: dict[str, list[Rule]]

    def check_roles(self) -> None:
        unknown = sorted(set(self.roles) - set(ROLES))
        if unknown:
            raise ValueError(f"unknown role(s): {', '.join(unknown)}; roles are {', '.join(ROLES)}")


class Resource(NamedTuple):  # made per request: a tuple is the cheapest to make
    """What an action is about. ``None`` fields mean 'not tied to one'."""

    tenant_id: str | None = None
    project_id: str | None = None
    model: str | None = None
    allowed_models: tuple[str, ...] | None = None  # the project's list, for inference
    granted_models: tuple[str, ...] | None = None  # the tenant's grant, for inference


class Policy:
    """A parsed policy; never changed once made (a reload makes a new one), so what it
    answers for a role, action and scope is remembered."""

    def __init__(self, doc: PolicyDoc, source: str) -> None:
        self.doc = doc
        self.source = source
        self._answers: dict[tuple[str, str, Scope], bool] = {}

    def role_allows(self, role: str, action: str, scope: Scope) -> bool:
        key = (role, action, scope)
        found = self._answers.get(key)
        if found is None:
            found = any(rule.scope == scope
                        and any(fnmatch.fnmatchcase(action, a) for a in rule.actions)
                        for rule in self.doc.roles.get(role, []))
            if len(self._answers) >= 4096:  # roles x actions x scopes: a few hundred
                self._answers.clear()
            self._answers[key] = found
        return found


MAX_POLICY_BYTES = 1 << 20
MAX_NESTING = 32  # a policy is three levels deep; YAML's parser recurses per level


def _nesting(text: str) -> int:
    """Deepest run of open flow brackets: 1,000 nested '[' crashed the YAML parser."""
    depth = deepest = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}" and depth:
            depth -= 1
    return deepest


def parse_policy(text: str, source: str) -> Policy:
    """A valid policy, or ValueError with a message naming what is wrong."""
    if len(text) > MAX_POLICY_BYTES:
        raise ValueError(f"{source}: larger than {MAX_POLICY_BYTES} bytes")
    if _nesting(text) > MAX_NESTING:
        raise ValueError(f"{source}: nested deeper than {MAX_NESTING} levels")
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{source}: not valid YAML: {exc}") from None
    except RecursionError:  # belt and braces: the depth check above should catch it
        raise ValueError(f"{source}: nested too deeply") from None
    try:
        doc = PolicyDoc.model_validate(data)
        doc.check_roles()
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ValueError(f"{source}: {loc}: {err['msg']}") from None
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    return Policy(doc, source)


class PolicyStore:
    """The policy in force; ``current()`` rereads the file when its mtime/size changed
    (looked at no more than once per ``check_interval_s``)."""

    def __init__(self, path: Path | None, check_interval_s: float = 1.0,
                 on_reload: Callable[[bool, str | None], None] | None = None) -> None:
        """``on_reload(applied, error)``: told of every reload, applied or refused (the
        audit trail)."""
        self.path = path or DEFAULT_POLICY
        self.check_interval_s = check_interval_s
        self.on_reload = on_reload
        self._checked = time.monotonic()
        self._stamp: tuple[float, int] | None = None
        self._policy = parse_policy(self.path.read_text(encoding="utf-8"), str(self.path))
        self._stamp = self._stat()
        self.last_error: str | None = None

    def _stat(self) -> tuple[float, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime, st.st_size)

    def current(self) -> Policy:
        now = time.monotonic()
        if now - self._checked < self.check_interval_s:
            return self._policy  # the file is looked at once a second, not per request
        self._checked = now
        stamp = self._stat()
        if stamp != self._stamp:
            self._stamp = stamp
            self.reload()
        return self._policy

    def reload(self) -> bool:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            self.last_error = f"{self.path}: file removed; keeping the last good policy"
            log.error("policy file removed; the last good policy stays in force",
                      extra={"path": str(self.path)})
            self._tell(False, self.last_error)
            return False
        try:
            policy = parse_policy(text, str(self.path))
        except ValueError as exc:
            self.last_error = str(exc)
            log.error("policy file rejected; the last good policy stays in force",
                      extra={"path": str(self.path), "reason": str(exc)})
            self._tell(False, str(exc))
            return False
        self._policy = policy
        self.last_error = None
        log.info("policy reloaded", extra={"path": str(self.path)})
        self._tell(True, None)
        return True

    def _tell(self, applied: bool, error: str | None) -> None:
        if self.on_reload is not None:
            try:
                self.on_reload(applied, error)
            except Exception:  # noqa: BLE001 - a reload must not fail because of its record
                log.exception("the policy reload could not be recorded")


# bounded by the project's model list and the tenant's grant
MODEL_ACTIONS = frozenset({"inference", "model.list", "model.pull"})


def _scope_of(binding_tenant: str | None, binding_project: str | None) -> Scope:
    if binding_project is not None:
        return "project"
    if binding_tenant is not None:
        return "tenant"
    return "platform"


def authorize(policy: Policy, identity: Any, action: str, resource: Resource) -> bool:
    """True when some binding of ``identity`` allows ``action`` on ``resource`` and the key's
    narrowing and the project's model list agree. Deny by default."""
    actions = getattr(identity, "actions", None)
    if actions is not None and not any(fnmatch.fnmatchcase(action, a) for a in actions):
        return False
    projects = getattr(identity, "projects", None)
    if projects is not None and resource.project_id not in projects:
        return False
    models = getattr(identity, "models", None)
    if models is not None and resource.model is not None and resource.model not in models:
        return False
    if action in MODEL_ACTIONS and (
        (resource.allowed_models is not None and resource.model not in resource.allowed_models)
        or (resource.granted_models is not None and resource.model not in resource.granted_models)
    ):
        return False
    for b in getattr(identity, "bindings", ()):
        scope = _scope_of(b.tenant_id, b.project_id)
        if scope == "tenant" and b.tenant_id != resource.tenant_id:
            continue
        if scope == "project" and (b.project_id != resource.project_id or resource.project_id
                                   is None):
            continue
        if policy.role_allows(b.role, action, scope):
            return True
    return False


def may_ever(policy: Policy, identity: Any, action: str) -> bool:
    """Whether ``identity`` holds ``action`` at all (some binding's role has it at the
    binding's scope, and the key is not narrowed away from it): a caller without it is
    refused (403); one that has it but not for a given resource is told "not found"."""
    actions = getattr(identity, "actions", None)
    if actions is not None and not any(fnmatch.fnmatchcase(action, a) for a in actions):
        return False
    return any(policy.role_allows(b.role, action, _scope_of(b.tenant_id, b.project_id))
               for b in getattr(identity, "bindings", ()))
