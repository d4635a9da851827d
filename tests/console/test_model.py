"""The playground's stream and the models page with the real bundled model: the stream is
the inference pipeline's own, under the session's identity, and shows in usage."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import ADMIN_KEY, MODEL, make_settings
from tests.console.support import ConsoleClient, running

pytestmark = pytest.mark.model


async def test_playground_streams_and_the_request_shows_in_usage(tmp_path) -> None:
    async for app in running(make_settings(tmp_path / "d")):
        c = ConsoleClient(app)
        await c.sign_in(ADMIN_KEY)
        page = (await c.get("/console/playground")).text
        token = re.search(r'data-csrf="([^"]+)"', page).group(1)
        assert f'<option value="{MODEL}">' in page
        body = {"model": MODEL, "stream": True, "max_tokens": 12, "temperature": 0,
                "messages": [{"role": "user", "content": "Count from one to ten."}]}
        deltas = []
        async with c.http.stream("POST", "/console/api/chat", json=body,
                                 headers={"X-CSRF-Token": token,
                                          "Sec-Fetch-Site": "same-origin"}) as r:
            assert r.status_code == 200, await r.aread()
            assert r.headers["content-type"].startswith("text/event-stream")
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    deltas.append(chunk["choices"][0]["delta"].get("content") or "")
        assert len([d for d in deltas if d]) >= 2  # token by token, not one blob
        app.state.audit.flush(10)
        usage = (await c.get("/console/usage?group=model")).text
        assert f"<td>{MODEL}</td>" in usage and "<rect" in usage
        models = (await c.get("/console/models")).text
        assert "Verified" in models and "sha256" in models.lower()
        assert "embedded" in models  # the engine's instance, with its state
        await c.close()
