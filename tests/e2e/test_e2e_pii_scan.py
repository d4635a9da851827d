"""Personal data never reaches a log line or a stored record unmasked (issue 11, point 10).

One real `autoglm serve` (SQLite, the default store; REST and gRPC) gets requests carrying
valid personal data in every place a client can put it: message texts (system and user,
plain and as parts), the legacy prompt, streamed and not, the ``user`` field, a message's
``name``, stop sequences, the request-id, purpose, consent, project and user-agent headers
(and the gRPC metadata), an unknown model name, a malformed body, a body sent with a bad
key, a key that is itself personal data, query strings, an unknown path, and admin API
paths, query strings and bodies (as the platform admin, and refused to a tenant admin). A
tenant whose policy blocks ``cn_id`` gets its 400 naming the category, never the value.
Then the server is stopped gracefully, the audit trail is exported (JSONL and CEF), and
every byte the platform wrote is scanned for each raw value in several spellings: the
server's stderr and stdout, every file under its data dir (the SQLite database with its
-wal and -shm, audit keys and checkpoints, anything else), and both exports. None may be
there.

Each place gets values of its own (``pii.py``: valid to the platform's recognisers), so a
leak names the place it came from.

Names a caller gives on purpose to be stored (a tenant's, a principal's, a project's name
in the admin API) are the directory's data, not something to mask, and are left out.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from urllib.parse import quote

import grpc
import pytest

from autoglm.rpc.gen.autoglm.v1 import inference_pb2 as pb
from autoglm.rpc.gen.autoglm.v1 import inference_pb2_grpc as pb_grpc

from .pii import (
    Places,
    check_values_are_recognised,
    id_safe,
    id_shaped,
    label,
    leaks,
    sentence,
    spellings,
)
from .support import ADMIN_KEY, AUTOGLM, MODEL, ServerProcess, base_env

pytestmark = pytest.mark.e2e

# The client's address is personal data too: some requests come from a loopback address of
# their own (the server listens on 127.0.0.1 and says so in its log), which no stored
# record, log line or export may hold in clear (audit records seal it per data subject).
CLIENT_ADDRESS = "127.0.0.2"

GRPC_TIMEOUT_S = 30.0
MARKER = "pii-scan-tenant"  # a name stored on purpose: proves the scan reads the database


# --- the server and its calls ---------------------------------------------------------------
def cli(env: dict[str, str], *args: str) -> dict:
    out = subprocess.run([str(AUTOGLM), *args, "--json"], capture_output=True, text=True,
                         timeout=60, env=env, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def tenant_key(srv: ServerProcess, tenant: str) -> str:
    """A key of the tenant's admin. The tenant itself is made in the database before the
    server starts: its PII policy is a setting, so its id must be known then."""
    with srv.client(auth=True) as http:
        r = http.put(f"/admin/v1/tenants/{tenant}/models", json={"models": [MODEL]})
        assert r.status_code == 200, r.text
        prn = http.post(f"/admin/v1/tenants/{tenant}/principals",
                        json={"name": "pii-scan-admin"}).json()["id"]
        r = http.post(f"/admin/v1/principals/{prn}/bindings", json={"role": "tenant_admin"})
        assert r.status_code == 201, r.text
        r = http.post(f"/admin/v1/principals/{prn}/keys", json={})
        assert r.status_code == 201, r.text
        return r.json()["key"]


def chat(text: str | list, **kw) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}],
            "max_tokens": 2, "temperature": 0, **kw}


def send_inference(srv: ServerProcess, p: Places) -> None:
    """The texts and fields of inference requests, and the headers beside them (each
    place with values of its own, several places to a request: the model is slow)."""
    with srv.client(auth=True) as http:
        s = p("chat_system")
        r = http.post("/v1/chat/completions", json={
            "model": MODEL, "max_tokens": 2, "temperature": 0,
            "messages": [{"role": "system", "content": sentence(s), "name": s["email"]},
                         {"role": "user", "content": "hi"}]},
                      headers={"X-Client-Request-Id": id_safe(p("client_request_id")),
                               "User-Agent": label(p("user_agent"))})
        assert r.status_code == 200, r.text
        r = http.post("/v1/chat/completions",
                      json=chat([{"type": "text", "text": sentence(p("chat_user_parts"))}]),
                      headers={"X-Processing-Purpose": label(p("purpose")),
                               "X-Consent-Id": label(p("consent"))[:128]})
        assert r.status_code == 200, r.text
        query = "&".join(f"{c}={quote(v, safe='')}" for c, v in p("query_inference").items())
        with http.stream("POST", "/v1/chat/completions?" + query,
                         json=chat(sentence(p("chat_stream")), stream=True)) as r:
            assert r.status_code == 200 and "[DONE]" in r.read().decode()
        r = http.post("/v1/completions", json={"model": MODEL, "max_tokens": 2,
                                               "prompt": sentence(p("completion"))},
                      headers={"X-Request-ID": id_safe(p("x_request_id"))})
        assert r.status_code == 200, r.text
        stop = p("stop")
        with http.stream("POST", "/v1/completions", json={
                "model": MODEL, "max_tokens": 2, "stream": True,
                "prompt": [sentence(p("completion_stream"))], "user": sentence(p("user_field")),
                "stop": [stop["cn_mobile"], stop["email"]]}) as r:
            assert r.status_code == 200 and "[DONE]" in r.read().decode()


def send_refusals(srv: ServerProcess, p: Places) -> None:
    """Requests refused before the engine: their error paths log and audit too."""
    with srv.client(auth=True) as http:
        projects = [id_safe(p("project_header")), *id_shaped(p("project_header_id_shaped"))]
        for project in projects:
            r = http.post("/v1/chat/completions", json=chat("hi"),
                          headers={"OpenAI-Project": project})
            assert r.status_code == 404, r.text
        m = p("unknown_model")
        for model in (f"gpt-{m['email']}", id_safe(m)):
            r = http.post("/v1/chat/completions", json={**chat("hi"), "model": model})
            assert r.status_code == 404, r.text
        unclosed = json.dumps(chat(sentence(p("malformed_body"))), ensure_ascii=False)[:-1]
        r = http.post("/v1/chat/completions", headers={"content-type": "application/json"},
                      content=unclosed.encode())
        assert r.status_code == 400, r.text
        bad = p("invalid_field")
        r = http.post("/v1/chat/completions", json={**chat("hi"), "messages": [
            {"role": id_safe(bad), "content": sentence(bad)}]})
        assert r.status_code == 400, r.text
        r = http.get("/v1/" + quote(sentence(p("unknown_path")), safe=""))
        assert r.status_code == 404, r.text
    with srv.client() as http:  # no key, a bad key, a key that is personal data
        r = http.post("/v1/chat/completions", json=chat(sentence(p("no_key_body"))))
        assert r.status_code == 401, r.text
        r = http.post("/v1/chat/completions", json=chat(sentence(p("bad_key_body"))),
                      headers={"Authorization": "Bearer agk_not-a-key",
                               "OpenAI-Project": id_safe(p("bad_key_project"))})
        assert r.status_code == 401, r.text
        r = http.post("/v1/chat/completions", json=chat("hi"),
                      headers={"Authorization": f"Bearer {id_safe(p('key_is_pii'))}"})
        assert r.status_code == 401, r.text
        r = http.get("/admin/v1/tenants", headers={
            "Authorization": f"Bearer {p('admin_bad_key')['email']}"})
        assert r.status_code == 401, r.text


def send_admin(srv: ServerProcess, p: Places, tenant_secret: str) -> None:
    """Admin paths, query strings and bodies that name nothing stored, as the platform admin
    (allowed: nothing to refuse) and as a tenant admin (refused, and the refusal audited)."""
    with srv.client(auth=True) as http:
        a = p("admin_path")
        for path in (f"/admin/v1/principals/{quote(a['email'])}", f"/admin/v1/keys/{a['cn_id']}",
                     f"/admin/v1/tenants/{id_safe(a)}/principals"):
            r = http.get(path)
            assert r.status_code in (400, 404), (path, r.text)
        q = p("admin_query")
        r = http.get("/admin/v1/tenants", params={"after": id_safe(q), "email": q["email"]})
        assert r.status_code == 400, r.text
        r = http.post("/admin/v1/tenants", json={"name": 5, "note": sentence(p("admin_body"))})
        assert r.status_code == 400, r.text
        r = http.get("/admin/v1/engines", headers={
            "X-Client-Request-Id": id_safe(p("admin_headers")),
            "X-Processing-Purpose": label(p("admin_headers"))})
        assert r.status_code == 200, r.text
    with srv.client(headers={"Authorization": f"Bearer {tenant_secret}"}) as http:
        t = p("tenant_admin_paths")
        shaped = id_shaped(t)
        for path in (f"/admin/v1/principals/{quote(t['email'])}", f"/admin/v1/keys/{t['cn_id']}",
                     f"/admin/v1/projects/{shaped[0]}", f"/admin/v1/principals/{shaped[1]}",
                     f"/admin/v1/keys/{shaped[2]}", f"/admin/v1/tenants/{shaped[0]}"):
            r = http.get(path)
            assert r.status_code in (400, 403, 404), (path, r.text)
        u = p("tenant_admin_queries")
        for path, params in (("/admin/v1/usage", {"project": id_shaped(u)[0]}),
                             ("/admin/v1/usage", {"tenant": id_shaped(u)[1]}),
                             ("/admin/v1/audit", {"actor": id_safe(u), "tenant": u["email"]})):
            r = http.get(path, params=params)
            assert r.status_code in (200, 400, 403, 404), (path, r.text)


def send_blocked(srv: ServerProcess, p: Places, tenant_secret: str) -> None:
    """The tenant blocks cn_id: a 400 naming the category, never echoing a value."""
    with srv.client(headers={"Authorization": f"Bearer {tenant_secret}"}) as http:
        b = p("tenant_blocked")
        r = http.post("/v1/chat/completions", json=chat(sentence(b)))
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["code"] == "pii_blocked" and "cn_id" in err["message"], err
        echoed = [s for c, v in b.items() for s in spellings(c, v) if s in r.text]
        assert not echoed, f"the 400 echoes the blocked request's values: {echoed}"
        r = http.post("/v1/chat/completions",
                      json=chat(sentence(p("tenant_masked"), skip=("cn_id",))))
        assert r.status_code == 200, r.text


def send_from_client_address(srv: ServerProcess, secret: str) -> None:
    """An inference, an admin act, a refused one and a failed authentication, all from
    ``CLIENT_ADDRESS``."""
    import httpx

    def client(**kw) -> httpx.Client:
        return srv.client(transport=httpx.HTTPTransport(local_address=CLIENT_ADDRESS), **kw)

    with client(auth=True) as http:
        assert http.post("/v1/chat/completions", json=chat("hi")).status_code == 200
        r = http.post("/admin/v1/tenants", json={"name": "pii-scan-address"})
        assert r.status_code == 201, r.text
    with client(headers={"Authorization": f"Bearer {secret}"}) as http:
        r = http.post("/admin/v1/tenants", json={"name": "not-allowed"})
        assert r.status_code == 403, r.text
    with client(headers={"Authorization": "Bearer " + "q" * 40}) as http:
        assert http.post("/v1/chat/completions", json=chat("hi")).status_code == 401


def send_grpc(srv: ServerProcess, p: Places) -> None:
    auth = ("authorization", f"Bearer {ADMIN_KEY}")
    with grpc.insecure_channel(srv.grpc_target) as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        stub = pb_grpc.InferenceStub(ch)
        g = p("grpc_chat")
        stub.ChatCompletion(pb.ChatCompletionRequest(
            model=MODEL, max_tokens=2, temperature=0, user=g["email"], stop=[g["cn_id"]],
            messages=[pb.ChatMessage(role="system", content=sentence(g), name=g["passport"]),
                      pb.ChatMessage(role="user", content="hi")]),
            metadata=(auth, ("x-client-request-id", id_safe(p("grpc_request_id"))),
                      ("x-processing-purpose", label(p("grpc_purpose"))),
                      ("x-consent-id", label(p("grpc_consent"))[:128])),
            timeout=GRPC_TIMEOUT_S)
        chunks = list(stub.CompletionStream(pb.CompletionRequest(
            model=MODEL, max_tokens=2, prompt=sentence(p("grpc_completion_stream"))),
            metadata=(auth, ("x-request-id", id_safe(p("grpc_x_request_id")))),
            timeout=GRPC_TIMEOUT_S))
        assert chunks
        refused = (
            (pb.ChatCompletionRequest(model=f"m-{p('grpc_unknown_model')['email']}",
                                      messages=[pb.ChatMessage(role="user", content="hi")]),
             (auth,)),
            (pb.ChatCompletionRequest(model=MODEL, messages=[pb.ChatMessage(
                role="user", content=sentence(p("grpc_bad_key")))]),
             (("authorization", "Bearer agk_not-a-key"),)),
            (pb.ChatCompletionRequest(model=MODEL, messages=[pb.ChatMessage(
                role="user", content="hi")]),
             (auth, ("openai-project", id_safe(p("grpc_project"))))),
        )
        for req, md in refused:
            try:
                stub.ChatCompletion(req, metadata=md, timeout=GRPC_TIMEOUT_S)
            except grpc.RpcError as exc:
                assert exc.code() in (grpc.StatusCode.NOT_FOUND,
                                      grpc.StatusCode.UNAUTHENTICATED), exc
            else:
                raise AssertionError(f"not refused: {req}")


# --- the scan -----------------------------------------------------------------------------------
def export_audit(env: dict[str, str], out_dir: Path) -> list[Path]:
    paths = []
    for fmt in ("jsonl", "cef"):
        path = out_dir / f"audit.{fmt}"
        out = subprocess.run([str(AUTOGLM), "audit", "export", "--format", fmt, "--out",
                              str(path)], capture_output=True, text=True, timeout=60, env=env,
                             check=False)
        assert out.returncode == 0, out.stderr
        paths.append(path)
    return paths


def test_no_raw_personal_data_in_logs_database_or_audit_exports(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = base_env(AUTOGLM_DATA_DIR=str(data))
    tenant = cli(env, "tenants", "create", MARKER)["id"]
    srv = ServerProcess(tmp_path, name="pii-scan", grpc=True, args=["--slots", "2"], env={
        "AUTOGLM_PII_TENANT_ACTIONS": json.dumps({tenant: {"cn_id": "block"}})})
    p = Places()
    srv.start()
    try:
        secret = tenant_key(srv, tenant)
        send_inference(srv, p)
        send_refusals(srv, p)
        send_admin(srv, p, secret)
        send_blocked(srv, p, secret)
        send_grpc(srv, p)
        send_from_client_address(srv, secret)
    except BaseException:
        srv.stop(check=False)
        raise
    srv.stop()  # graceful: SIGTERM, a clean exit, queued and folded audit records written
    for v in p.sets.values():
        check_values_are_recognised(v)
    exports = export_audit(env, tmp_path)
    stored = sorted(f for f in data.rglob("*") if f.is_file())
    assert any(f.suffix == ".db" or "sqlite" in f.name for f in stored), stored
    db_bytes = b"".join(f.read_bytes() for f in stored)
    assert MARKER.encode() in db_bytes, "the scan does not see the database's text"
    jsonl = [json.loads(line) for line in exports[0].read_text().splitlines() if line.strip()]
    assert sum(r.get("action") == "inference" for r in jsonl) >= 10, len(jsonl)
    files = [srv.stderr_path, srv.stdout_path, *stored, *exports]
    found = leaks(files, p)
    for path in files:
        data = path.read_bytes()
        at = data.find(CLIENT_ADDRESS.encode())
        if at >= 0:
            found.append(f"client address in {path.name} @{at}: "
                         f"{data[max(0, at - 120):at + 60].decode('utf-8', 'replace')!r}")
    assert not found, "raw personal data written down:\n" + "\n".join(found)
