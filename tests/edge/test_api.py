"""/admin/v1/edge on a centre: the snapshot with its ETag (304 when nothing changed),
platform keys only, and the forward endpoint's refusals."""

from __future__ import annotations

from tests.conftest import AppClient


async def test_the_snapshot_is_a_304_until_something_changes(api: AppClient) -> None:
    first = await api.get("/admin/v1/edge/snapshot")
    assert first.status_code == 200 and first.json()["version"] == 1
    etag = first.headers["etag"]
    same = await api.get("/admin/v1/edge/snapshot", headers={"If-None-Match": etag})
    assert same.status_code == 304 and same.content == b""
    made = await api.post("/admin/v1/tenants", {"name": "edge-etag"})
    assert made.status_code == 201, made.text
    changed = await api.get("/admin/v1/edge/snapshot", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    assert made.json()["id"] in {t["id"] for t in changed.json()["tables"]["tenants"]}


async def test_only_platform_keys_reach_the_edge_routes(api: AppClient) -> None:
    t = (await api.post("/admin/v1/tenants", {"name": "edge-iso"})).json()
    prn = (await api.post(f"/admin/v1/tenants/{t['id']}/principals", {"name": "a"})).json()
    await api.post(f"/admin/v1/principals/{prn['id']}/bindings", {"role": "tenant_admin"})
    key = (await api.post(f"/admin/v1/principals/{prn['id']}/keys", {})).json()["key"]
    them = {"Authorization": f"Bearer {key}"}
    for method, path in (("GET", "/admin/v1/edge/snapshot"), ("GET", "/admin/v1/edge/nodes"),
                         ("GET", "/admin/v1/edge/nodes/site-x"),
                         ("POST", "/admin/v1/edge/nodes/site-x/audit")):
        r = await api.http.request(method, path, headers=them,
                                   json={"records": []} if method == "POST" else None)
        assert r.status_code == 403, (path, r.text)


async def test_a_bad_forward_is_a_clear_400_or_404(api: AppClient) -> None:
    r = await api.post("/admin/v1/edge/nodes/site-x/audit", {"rows": []})
    assert r.status_code == 400 and "records" in r.json()["error"]["message"]
    r = await api.post("/admin/v1/edge/nodes/site-x/audit", {"records": [{"seq": 1}]})
    assert r.status_code == 400 and "record 0" in r.json()["error"]["message"]
    r = await api.get("/admin/v1/edge/nodes/bad%20name")
    assert r.status_code == 404
    r = await api.get("/admin/v1/edge/nodes/site-x")
    assert r.json() == {"node": "site-x", "seq": 0, "hash": r.json()["hash"]}
    assert (await api.post("/admin/v1/edge/nodes/site-x/audit", {"records": []})).json()[
        "seq"] == 0
