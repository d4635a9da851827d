"""The one settings object (``Settings``), its fields grouped by concept in this package:
``serving`` (where things live, HTTP, authentication, logs), ``state`` (control plane,
Redis, limits, response cache, batch API), ``audit`` (audit chain, usage alerts, privacy),
``engine`` (models and engines), ``edge`` (edge nodes); ``specs`` (models, instances,
limits), ``sources`` (the YAML file), ``core`` (the class, its checks, ``load_settings``).

Precedence, highest first: command-line flags (passed as init kwargs), ``AUTOGLM_*``
environment variables, the YAML file given with ``--config`` (or ``AUTOGLM_CONFIG``),
then the defaults. Every field carries its documentation in ``description``;
``autoglm config show`` prints the effective values with secrets masked.
"""

from autoglm.settings.core import Settings, is_loopback, load_settings, revealed
from autoglm.settings.specs import (
    EMBEDDED_MODEL_ID,
    MIN_ADMIN_KEY_CHARS,
    InstanceSpec,
    LimitSpec,
    ModelSpec,
    ProbeSpec,
    default_data_dir,
)

__all__ = ["EMBEDDED_MODEL_ID", "MIN_ADMIN_KEY_CHARS", "InstanceSpec", "LimitSpec",
           "ModelSpec", "ProbeSpec", "Settings", "default_data_dir", "is_loopback",
           "load_settings", "revealed"]
