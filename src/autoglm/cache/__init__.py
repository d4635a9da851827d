"""The response cache: identical deterministic requests answered from a stored answer,
never across tenants; in this process, or shared through Redis. Opt-in per tenant
(``response_cache_tenants``) or per request (``X-AutoGLM-Cache: use``). The pipeline's
``cache`` stage uses it (``pipeline/stages/cache.py``)."""

from autoglm.cache.flight import Flights, Lead
from autoglm.cache.key import cache_key, model_digest, scope_of, uncacheable
from autoglm.cache.replay import Recorder, Recording, Replay, decode
from autoglm.cache.response_cache import RESULTS, ResponseCache
from autoglm.cache.store import MemoryStore, RedisStore, StoreDown

__all__ = ["RESULTS", "Flights", "Lead", "MemoryStore", "Recorder", "Recording", "RedisStore", "Replay",
           "ResponseCache", "StoreDown", "cache_key", "decode", "model_digest", "scope_of",
           "uncacheable"]
