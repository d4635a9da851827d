"""The controls catalogue (``catalogue.yaml``), loaded and checked: unique ids, known
frameworks, and a check in ``checks.CHECKS`` for every control."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from autoglm.compliance.checks import CHECKS
from autoglm.errors import ConfigError

CATALOGUE = Path(__file__).with_name("catalogue.yaml")


class Control(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(min_length=1)
    framework: str
    clause: str
    area: str
    title: str
    requirement: str
    check: str
    remedy: str


class Catalogue(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    version: int
    parameters: dict[str, Any]
    frameworks: dict[str, str]
    controls: list[Control]

    @model_validator(mode="after")
    def _consistent(self) -> Catalogue:
        ids = [c.id for c in self.controls]
        if len(ids) != len(set(ids)):
            raise ValueError("control ids must be unique")
        for c in self.controls:
            if c.framework not in self.frameworks:
                raise ValueError(f"{c.id}: unknown framework {c.framework}")
            if c.check not in CHECKS:
                raise ValueError(f"{c.id}: unknown check {c.check}")
        return self


def load(path: Path = CATALOGUE) -> Catalogue:
    try:
        return Catalogue.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"the compliance catalogue {path} is not valid: {exc}") from None
