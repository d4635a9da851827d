"""What to do with each category of personal data found in a text: allow, mask or block.

``PiiGuard(policy).apply(text)`` returns the text with masked values rewritten in their own
shape (``138****5678``) and blocked ones replaced by ``[blocked:CATEGORY]``, and the list
of blocked categories. It raises nothing: the caller turns ``Result.error()`` into its
400. A blocked value is never returned, logged or named; the error names the category.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, NamedTuple

from autoglm.errors import ConfigError, PiiBlockedError
from autoglm.privacy.recognisers import DEFAULT_RECOGNISERS, AnchoredRecogniser, Recogniser
from autoglm.privacy.scanner import Finding, Scanner
from autoglm.privacy.stream import StreamGuard

Action = Literal["allow", "mask", "block"]
ACTIONS: tuple[Action, ...] = ("allow", "mask", "block")


@dataclass(frozen=True)
class GuardPolicy:
    """The action per category; categories not named get ``default``."""

    actions: Mapping[str, Action] = field(default_factory=dict)
    default: Action = "mask"

    def __post_init__(self) -> None:
        for name, action in (*self.actions.items(), ("default", self.default)):
            if action not in ACTIONS:
                raise ConfigError(f"PII action for {name!r} must be one of "
                                  f"{', '.join(ACTIONS)}, not {action!r}")
        object.__setattr__(self, "actions", MappingProxyType(dict(self.actions)))

    def __hash__(self) -> int:
        return hash((tuple(sorted(self.actions.items())), self.default))

    def action(self, category: str) -> Action:
        return self.actions.get(category, self.default)

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> GuardPolicy:
        """From settings such as ``{"default": "mask", "cn_id": "block"}``."""
        actions = {str(k): v for k, v in data.items() if k != "default"}
        default = data.get("default", "mask")
        for name, value in (*actions.items(), ("default", default)):
            if not isinstance(value, str):
                raise ConfigError(f"PII action for {name!r} must be a string "
                                  f"({', '.join(ACTIONS)}), not {value!r}")
        return cls(actions=actions, default=default)  # type: ignore[arg-type]


class Result(NamedTuple):  # made per guarded text: a tuple is the cheapest to make
    """``text`` rewritten by the policy; ``findings``: the values in the input, allowed ones
    too (none when the policy allows every category: then nothing is scanned);
    ``blocked``: the blocked categories in order of first appearance."""

    text: str
    findings: tuple[Finding, ...]
    blocked: tuple[str, ...]

    def error(self) -> PiiBlockedError | None:
        """The 400 to answer with when anything was blocked, else ``None``."""
        return PiiBlockedError(self.blocked) if self.blocked else None


class PiiGuard:
    """Applies a :class:`GuardPolicy` with a set of recognisers; thread-safe."""

    def __init__(self, policy: GuardPolicy | None = None,
                 recognisers: Sequence[Recogniser | AnchoredRecogniser] = DEFAULT_RECOGNISERS
                 ) -> None:
        self.policy = policy or GuardPolicy()
        self.scanner = Scanner(recognisers)
        unknown = sorted(set(self.policy.actions) - set(self.scanner.categories))
        if unknown:
            raise ConfigError(f"unknown PII categories {unknown}; known: "
                              f"{', '.join(self.scanner.categories)}")
        self._actions = {c: self.policy.action(c) for c in self.scanner.categories}
        self._masks = {r.category: r.mask for r in self.scanner.recognisers}
        self.inert = all(a == "allow" for a in self._actions.values())

    @property
    def max_value_len(self) -> int:
        return self.scanner.max_len

    def scan(self, text: str) -> list[Finding]:
        """Every value found, whatever its action."""
        return self.scanner.scan(text)

    def apply(self, text: str) -> Result:
        if self.inert:
            return Result(text, (), ())
        findings = self.scanner.scan(text)
        if not findings:
            return Result(text, (), ())
        out, blocked = self.render(text, findings, 0, len(text))
        return Result(out, tuple(findings), tuple(dict.fromkeys(blocked)))

    def stream(self) -> StreamGuard:
        """A guard for one streamed answer."""
        return StreamGuard(self)

    def render(self, text: str, findings: Iterable[Finding], lo: int, hi: int
               ) -> tuple[str, list[str]]:
        """``text[lo:hi]`` with ``findings`` (all inside it) acted on; the blocked categories."""
        parts: list[str] = []
        blocked: list[str] = []
        pos = lo
        for f in findings:
            action = self._actions[f.category]
            if action == "allow":
                continue
            parts.append(text[pos:f.start])
            if action == "mask":
                parts.append(self._masks[f.category](text[f.start:f.end]))
            else:
                parts.append(f"[blocked:{f.category}]")
                blocked.append(f.category)
            pos = f.end
        parts.append(text[pos:hi])
        return "".join(parts), blocked
