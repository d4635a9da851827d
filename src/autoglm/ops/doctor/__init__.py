"""``autoglm doctor``: preflight checks of the host, its services and the configured
models, each a pass/warn/fail/skip with one line of detail and one line of remedy.

One module per group of checks: ``system`` (Python, CPU features, limits, kernel),
``storage`` (the data directory), ``network`` (ports, clock), ``services`` (database,
Redis), ``tls``, ``models`` (registry, served models, memory) and ``gpu`` (driver, CUDA,
vLLM and torch against ``compat.yaml``). ``runner`` runs them all at once.
"""

from autoglm.ops.doctor.result import Result
from autoglm.ops.doctor.runner import Context, run_checks, summary

__all__ = ["Context", "Result", "run_checks", "summary"]
