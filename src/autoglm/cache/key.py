"""What may be cached, and under which key.

Only a request whose answer is fixed by its content is cached: ``temperature`` 0 (greedy
decoding) or a ``seed``. Anything that makes several answers or answers the guard never
saw is not: ``n`` or ``best_of`` above 1, ``logprobs``/``top_logprobs`` (token texts of
the answer, which the PII guard does not scan).

The key is a SHA-256 over, in order: a format version; the scope (``tenant:<id>``, or
``platform`` for callers of no tenant), so that no two tenants ever share an entry; the
model id and its digest (what answers: the verified bytes of an embedded model, the file
hashes of a managed vLLM model, or the model names and URLs of an upstream pool); the
endpoint (chat or completion); the server's default answer length (it decides a request
that gives none); and the request body as the input guard left it (masked values, not
raw ones), as JSON with sorted keys, without the fields that do not change the answer
(``stream``, ``stream_options``, ``user``). A streamed and a JSON request therefore share
their entry.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

VERSION = 1
# request fields that change how the answer is delivered or attributed, not what it says
IGNORED = frozenset({"stream", "stream_options", "user"})


def deterministic(body: dict[str, Any]) -> bool:
    """Whether the request fixes its answer: temperature 0, or a seed."""
    t = body.get("temperature")
    if t == 0 and type(t) in (int, float):
        return True
    return type(body.get("seed")) is int


def uncacheable(body: dict[str, Any]) -> str | None:
    """Why this request's answer may not be cached, or None when it may."""
    if not deterministic(body):
        return "not deterministic: give temperature 0 or a seed"
    for name in ("n", "best_of"):
        if body.get(name) not in (None, 1):
            return f"{name} > 1"
    if body.get("logprobs") or body.get("top_logprobs"):
        return "logprobs"
    return None


def model_digest(engine: Any) -> str | None:
    """What identifies the model that answers, or None when nothing vouches for it (an
    embedded model served with ``model_trust: any``): such a model is never cached, since
    a changed file under the same path would be answered from the old one's entries."""
    card = engine.model
    load = (card.verification or {}).get("load") or {}
    if load.get("sha256"):  # the embedded engine: the bytes it loaded, hashed at load
        return f"sha256:{load['sha256']}"
    tree = getattr(engine, "files", None)  # managed vLLM: its directory's manifest hashes
    files = getattr(tree, "files", None)
    if isinstance(files, dict) and files:
        return "tree:" + _sha256(sorted((path, h) for path, (_, h) in files.items()))
    router = getattr(engine, "router", None)  # an upstream pool: who answers, under what name
    if router is not None:
        return "upstream:" + _sha256(sorted((i.url, i.upstream_model or card.id)
                                            for i in router.instances))
    return None


def cache_key(scope: str, model: str, digest: str, kind: str, default_max_tokens: int,
              body: dict[str, Any]) -> str:
    """The entry's key (hex). ``orjson.JSONEncodeError`` for a body that cannot be encoded."""
    fields = {k: v for k, v in body.items() if k not in IGNORED}
    h = hashlib.sha256(orjson.dumps([VERSION, scope, model, digest, kind, default_max_tokens]))
    h.update(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS))
    return h.hexdigest()


def scope_of(tenant: str | None) -> str:
    return f"tenant:{tenant}" if tenant else "platform"


def _sha256(value: Any) -> str:
    return hashlib.sha256(orjson.dumps(value)).hexdigest()
