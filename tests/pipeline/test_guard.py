"""The PII guard in the pipeline: prompts masked or blocked before the engine (and before
anything logs them), answers masked as they stream, a value split across chunks included,
per tenant; on the real model and on a stand-in upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import select

from autoglm.api.app import create_app
from autoglm.audit import AuditLog
from autoglm.pipeline.context import RequestContext
from autoglm.pipeline.request import InferenceRequest
from autoglm.pipeline.stage import Stage
from autoglm.store.db import Database, database_url
from autoglm.store.directory import Act, Directory
from autoglm.store.models import AuditRecord
from tests.conftest import MODEL, AppClient, make_settings
from tests.pipeline.conftest import UPSTREAM
from tests.standin import Standin

pytestmark = pytest.mark.model

MOBILE = "13812345678"
ID = "11010519491231002X"  # a valid resident ID (GB 11643 check character X)


class Spy(Stage):
    """Sees the texts the engine is about to get."""

    name = "spy"

    def __init__(self) -> None:
        self.seen: list[Sequence[str]] = []

    async def before(self, ctx: RequestContext, req: InferenceRequest) -> None:
        self.seen.append(tuple(req.texts()))


@pytest.fixture(scope="module")
async def guarded(tmp_path_factory: pytest.TempPathFactory,
                  standin: Standin) -> AsyncIterator[dict[str, Any]]:
    data = tmp_path_factory.mktemp("guard")
    base = make_settings(data)
    db = Database(database_url(base))
    db.upgrade()
    audit = AuditLog.from_settings(base, db)
    strict = Directory(db, audit).create_tenant(Act("test", None), "strict").id
    audit.close()
    db.close()
    settings = make_settings(data, models=[
        {"id": MODEL, "engine": "llamacpp"},
        {"id": UPSTREAM, "engine": "openai", "instances": [{"url": standin.url}]},
    ], pii_tenant_actions={strict: {"cn_id": "block", "cn_mobile": "block"}},
        audit_text_tenants=[strict])
    spy = Spy()
    app = create_app(settings, extra_stages={"admission": [spy]})
    async with LifespanManager(app, startup_timeout=120, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test",
                                     timeout=60) as http:
            client = AppClient(app, http)
            t = strict
            await http.put(f"/admin/v1/tenants/{t}/models", json={"models": [MODEL, UPSTREAM]},
                           headers=client.auth)
            prn = (await client.post(f"/admin/v1/tenants/{t}/principals", {"name": "p"})).json()
            await client.post(f"/admin/v1/principals/{prn['id']}/bindings",
                              {"role": "tenant_admin"})
            key = (await client.post(f"/admin/v1/principals/{prn['id']}/keys", {})).json()
            yield {"client": client, "spy": spy, "strict": {"Authorization":
                                                            f"Bearer {key['key']}"}}


def chat(model: str, text: str, **kw: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}],
            "max_tokens": 4, "temperature": 0, **kw}


@pytest.mark.parametrize("model", [MODEL, UPSTREAM])
async def test_a_prompt_is_masked_before_the_engine(guarded, model: str) -> None:
    client, spy = guarded["client"], guarded["spy"]
    r = await client.post("/v1/chat/completions",
                          chat(model, f"My phone is {MOBILE}, ID {ID}. Say hi."))
    assert r.status_code == 200, r.text
    text = spy.seen[-1][0]
    assert MOBILE not in text and ID not in text
    assert "138****5678" in text


async def test_an_untouched_prompt_reaches_the_upstream_as_sent(guarded, standin) -> None:
    client = guarded["client"]
    body = chat(UPSTREAM, "Nothing personal here.")
    raw = orjson.dumps(body)
    r = await client.http.post("/v1/chat/completions", content=raw,
                               headers={**client.auth, "content-type": "application/json"})
    assert r.status_code == 200
    assert "Nothing personal here." in standin.stats()["last_body"]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_tenant_that_blocks_gets_a_400_naming_the_category_not_the_value(
        guarded, stream: bool) -> None:
    client = guarded["client"]
    r = await client.http.post("/v1/chat/completions", headers=guarded["strict"],
                               json=chat(MODEL, f"ID {ID}", stream=stream))
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "pii_blocked" and "cn_id" in err["message"]
    assert ID not in r.text


def sse_text(body: bytes) -> str:
    out = []
    for block in body.split(b"\n\n"):
        if block.startswith(b"data: {"):
            for c in orjson.loads(block[6:])["choices"]:
                out.append(c["delta"].get("content") or "")
    return "".join(out)


@pytest.mark.parametrize("chunk", [1, 2, 3, 5])
async def test_an_answer_is_masked_even_split_across_chunks(guarded, standin, chunk) -> None:
    client = guarded["client"]
    say = f"Call {MOBILE} or write to li.lei@example.com, thanks"
    standin.control(say=say, say_chunk=chunk)
    try:
        streamed = await client.post("/v1/chat/completions", chat(UPSTREAM, "hi", stream=True))
        whole = await client.post("/v1/chat/completions", chat(UPSTREAM, "hi"))
    finally:
        standin.control(say=None)
    text = sse_text(streamed.content)
    assert text == whole.json()["choices"][0]["message"]["content"]
    assert MOBILE not in text and "li.lei@example.com" not in text
    assert text.startswith("Call 138****5678 or write to ") and text.endswith(", thanks")


async def test_a_blocked_value_in_an_answer_ends_the_stream_with_the_error(
        guarded, standin) -> None:
    client = guarded["client"]
    standin.control(say=f"your ID is {ID} ok", say_chunk=4)
    try:
        r = await client.http.post("/v1/chat/completions", headers=guarded["strict"],
                                   json=chat(UPSTREAM, "hi", stream=True))
        whole = await client.http.post("/v1/chat/completions", headers=guarded["strict"],
                                       json=chat(UPSTREAM, "hi"))
    finally:
        standin.control(say=None)
    assert ID not in r.text and ID[:10] not in r.text
    assert b"pii_blocked" in r.content
    assert whole.status_code == 400 and whole.json()["error"]["code"] == "pii_blocked"
    assert ID not in whole.text


async def test_a_tenant_that_keeps_text_has_it_sealed_in_its_record_as_the_guard_left_it(
        guarded, standin) -> None:
    """``audit_text_tenants``: prompt and answer in the record, masked by the guard, sealed
    under the caller's key (never in a column in clear), opened by the audit read."""
    client = guarded["client"]
    standin.control(say="Write to wang.fang@example.com today")
    try:
        r = await client.http.post("/v1/chat/completions", headers=guarded["strict"],
                                   json=chat(UPSTREAM, "I am li.lei@example.com, hello"))
        plain = await client.post("/v1/chat/completions", chat(UPSTREAM, "no tenant, no text"))
    finally:
        standin.control(say=None)
    assert r.status_code == 200 and plain.status_code == 200
    app = client.app
    app.state.audit.flush()
    with app.state.db.engine.connect() as conn:
        rows = {row.request_id: dict(row._mapping) for row in conn.execute(
            select(AuditRecord.__table__).where(AuditRecord.request_id.in_(
                [r.headers["x-request-id"], plain.headers["x-request-id"]])))}
    kept, other = rows[r.headers["x-request-id"]], rows[plain.headers["x-request-id"]]
    assert "example.com" not in orjson.dumps(kept, default=str).decode()
    app.state.audit.vault.open_rows([kept, other])
    assert kept["text"]["prompt"].startswith("I am l") and "li.lei@example.com" not in kept[
        "text"]["prompt"] and "@example.com" in kept["text"]["prompt"]
    assert kept["text"]["answer"].startswith("Write to ")
    assert "wang.fang@example.com" not in kept["text"]["answer"]
    assert other.get("text") is None  # the platform admin's tenant-less call keeps none
    page = await client.get(f"/admin/v1/audit?action=inference&limit=100")
    seen = {rec["request_id"]: rec for rec in page.json()["data"]}
    assert seen[r.headers["x-request-id"]]["text"] == kept["text"]
