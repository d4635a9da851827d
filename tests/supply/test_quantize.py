import shutil
from pathlib import Path

import pytest

from autoglm.engine.catalog import embedded_model_path
from autoglm.errors import ConfigError
from autoglm.supply.quantize import quantize
from autoglm.supply.registry import Registry
from tests.conftest import make_settings, start_app

pytestmark = pytest.mark.model


async def test_quantize_registers_a_servable_model(tmp_path: Path) -> None:
    src = tmp_path / "smol"
    src.mkdir()
    shutil.copyfile(embedded_model_path(), src / "smol.Q4_1.gguf")
    reg = Registry(tmp_path / "d")
    reg.add(src, "smol")
    entry = quantize(reg, "smol", "q8_0", threads=1)
    assert entry["name"] == "smol-q8_0" and entry["quantization"] == "Q8_0"
    assert entry["source"] == "quantized:smol:q8_0"
    out = Path(entry["path"])
    assert [p.name for p in out.iterdir()] == ["smol.Q8_0.gguf"]  # no temporary left
    assert reg.verify("smol-q8_0").intact
    # served at once, by name, under the default trust policy (verified)
    async for client in start_app(make_settings(tmp_path / "d", model="smol-q8_0")):
        r = await client.post("/v1/completions", {"model": "smol-q8_0", "prompt": "Hello",
                                                   "max_tokens": 3, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    with pytest.raises(ConfigError, match="unknown quantization type"):
        quantize(reg, "smol", "q9_9")
    with pytest.raises(ConfigError, match="already registered"):
        quantize(reg, "smol", "q8_0")
