"""The one settings object.

Precedence, highest first: command-line flags (passed as init kwargs), ``AUTOGLM_*``
environment variables, the YAML file given with ``--config`` (or ``AUTOGLM_CONFIG``),
then the defaults below. Every field carries its documentation in ``description``;
``autoglm config show`` prints the effective values with secrets masked.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from autoglm.errors import ConfigError
from autoglm.security.keys import well_formed
from autoglm.settings.audit import AuditFields
from autoglm.settings.edge import EdgeFields
from autoglm.settings.engine import EngineFields
from autoglm.settings.serving import ServingFields
from autoglm.settings.sources import YamlSource
from autoglm.settings.specs import MIN_ADMIN_KEY_CHARS, ModelSpec
from autoglm.settings.state import StateFields


class Settings(EdgeFields, AuditFields, StateFields, EngineFields, ServingFields,
               BaseSettings):
    """Effective configuration of one Open-AutoGLM server."""

    model_config = SettingsConfigDict(
        env_prefix="AUTOGLM_", extra="forbid", validate_default=True, protected_namespaces=()
    )

    # --- where the settings came from (not itself a setting) -----------------------------
    config_file: Path | None = Field(
        None, description="YAML file these settings were read from, if any.", exclude=True
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        init_kwargs = getattr(init_settings, "init_kwargs", {})
        path = init_kwargs.get("config_file") or os.environ.get("AUTOGLM_CONFIG")
        yaml_source = YamlSource(settings_cls, Path(path) if path else None)
        return (init_settings, env_settings, yaml_source)

    @field_validator("admin_key")
    @classmethod
    def _strong_admin_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return value
        secret = value.get_secret_value()
        if not well_formed(secret) and len(secret) < MIN_ADMIN_KEY_CHARS:
            raise ValueError(
                f"admin_key is too weak: use a key made by `autoglm keys` (agk_...) or a "
                f"random secret of at least {MIN_ADMIN_KEY_CHARS} characters")
        return value

    @model_validator(mode="after")
    def _check_edge(self) -> Settings:
        if self.centre_url is not None and self.centre_key is None:
            raise ValueError("centre_url needs centre_key: the edge's key at the centre")
        if self.centre_url is not None and self.centre_url.startswith("http://") and \
                not is_loopback(urlsplit(self.centre_url).hostname or ""):
            raise ValueError("centre_url must be https:// (http:// only on loopback): the "
                             "snapshot holds key hashes and the records personal data")
        return self

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _check_proxies(cls, v: list[str]) -> list[str]:
        for item in v:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"forwarded_allow_ips: {item!r} is not an address or "
                                 "network (a host name or '*' is not accepted)") from None
        return v

    @field_validator("cors_allow_origins")
    @classmethod
    def _no_wildcard_origin(cls, value: list[str]) -> list[str]:
        if "*" in value:
            raise ValueError("'*' is not allowed: list the origins that may call the API")
        return value

    @field_validator("models")
    @classmethod
    def _unique_ids(cls, value: list[ModelSpec]) -> list[ModelSpec]:
        ids = [m.id for m in value]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"model ids must be unique: {', '.join(dupes)}")
        if sum(1 for m in value if m.engine == "llamacpp") > 1:
            raise ValueError("at most one embedded llamacpp model per server")
        return value

    @model_validator(mode="after")
    def _check_tls_pair(self) -> Settings:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile must be given together")
        if self.engine_restart_backoff_max_s < self.engine_restart_backoff_min_s:
            raise ValueError("engine_restart_backoff_max_s is below engine_restart_backoff_min_s")
        if self.grpc_port and self.grpc_port == self.port:
            raise ValueError("grpc_port must differ from port")
        return self

    @field_validator("alerts_quota_thresholds")
    @classmethod
    def _shares(cls, value: list[float]) -> list[float]:
        if any(not 0 < v <= 1 for v in value):
            raise ValueError("each threshold is a share of the quota, above 0 and at most 1")
        return sorted(set(value))

    @field_validator("alerts_webhook_url")
    @classmethod
    def _webhook_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("http://",
                                                                          "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @model_validator(mode="after")
    def _check_alerts(self) -> Settings:
        if self.alerts_webhook_url and self.alerts_webhook_secret_file is None:
            raise ValueError("alerts_webhook_url needs alerts_webhook_secret_file: every "
                             "alert is signed")
        if self.alerts_window_s < 2 * self.alerts_bucket_s:
            raise ValueError("alerts_window_s must hold at least two alerts_bucket_s")
        return self

    @model_validator(mode="after")
    def _no_open_door(self) -> Settings:
        if self.dangerously_disable_auth and not is_loopback(self.host):
            raise ValueError(
                f"dangerously_disable_auth serves without keys, so it only binds to a loopback "
                f"address (127.0.0.1, ::1, localhost), not {self.host}")
        return self

    @property
    def tls_enabled(self) -> bool:
        return self.ssl_certfile is not None

    def masked(self) -> dict[str, Any]:
        """Effective settings as plain data, every secret replaced by a mask."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                out[name] = "********"
            elif isinstance(value, Path):
                out[name] = str(value)
            elif name == "models":
                out[name] = [m.model_dump(mode="json") for m in value]  # SecretStr -> "**********"
            else:
                out[name] = value
        return out


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def revealed(model: BaseModel) -> dict[str, Any]:
    """Every field as JSON-ready data with secrets in clear: only for handing settings to
    a process of our own over a pipe (gateway workers), never for logs or files."""

    def plain(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return value.get_secret_value()
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, BaseModel):
            return {k: plain(getattr(value, k)) for k in type(value).model_fields}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return {k: plain(getattr(model, k)) for k in type(model).model_fields
            if not type(model).model_fields[k].exclude}


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from flags (``overrides``, None values dropped), env and YAML."""
    kwargs = {k: v for k, v in overrides.items() if v is not None}
    if config_file is not None:
        kwargs["config_file"] = config_file
    try:
        return Settings(**kwargs)
    except ConfigError:
        raise
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = ".".join(str(p) for p in err["loc"])
            msg = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"{loc}: {msg}" if loc else msg)
        raise ConfigError(f"invalid settings: {'; '.join(problems)}") from None
    except ValueError as exc:
        raise ConfigError(f"invalid settings: {exc}") from exc
