"""Rate limits and quotas: requests and tokens per minute per key, project and tenant, and
daily token quotas per tenant; exact in one process, shared through Redis across many."""

from autoglm.limits.book import SCOPES, LimitBook, Limits
from autoglm.limits.meter import Decision, Meter

__all__ = ["SCOPES", "Decision", "LimitBook", "Limits", "Meter"]
