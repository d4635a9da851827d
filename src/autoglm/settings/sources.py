"""The YAML settings file as a pydantic-settings source."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from autoglm.errors import ConfigError


class YamlSource(PydanticBaseSettingsSource):
    """Reads the optional YAML settings file; unknown keys are an error, not a silent typo."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self._data: dict[str, Any] = {}
        if path is None:
            return
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"settings file not found: {path}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"settings file {path} is not valid YAML: {exc}") from exc
        if loaded is None:
            return
        if not isinstance(loaded, dict):
            raise ConfigError(f"settings file {path} must hold a mapping at the top level")
        unknown = sorted(set(loaded) - set(settings_cls.model_fields))
        if unknown:
            raise ConfigError(f"settings file {path}: unknown setting(s) {', '.join(unknown)}")
        self._data = loaded

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)
