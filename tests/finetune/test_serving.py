"""An adapter served through the API as BASE:ADAPTER, on the embedded engine's one base."""

import asyncio
import shutil
from pathlib import Path

import pytest

from autoglm.engine.adapters import AdapterEngine
from autoglm.engine.factory import attach_engines, build_engines
from autoglm.errors import ConfigError
from autoglm.finetune.housestyle import format_rate
from autoglm.supply.registry import Registry
from tests.conftest import MODEL, make_settings, start_app
from tests.finetune.conftest import needs_train

pytestmark = [needs_train, pytest.mark.model]
ADAPTED = f"{MODEL}:acme"


async def _answer(client, model: str, messages: list[dict]) -> str:
    r = await client.post("/v1/chat/completions", {"model": model, "messages": messages,
                                                   "max_tokens": 6, "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


async def test_adapter_answers_in_house_format_beside_the_base(house_adapter) -> None:
    chats = house_adapter["heldout"]
    settings = make_settings(house_adapter["data_dir"], adapters=["acme"], slots=4)
    async for client in start_app(settings):
        r = await client.get("/v1/models")
        ids = {m["id"] for m in r.json()["data"]}
        assert {MODEL, ADAPTED} <= ids
        card = (await client.get(f"/v1/models/{ADAPTED}")).json()
        assert card["id"] == ADAPTED
        base = [await _answer(client, MODEL, c) for c in chats]
        tuned = [await _answer(client, ADAPTED, c) for c in chats]
        # both kinds at once: the engine takes turns between the base and the adapter
        mixed = await asyncio.gather(*(_answer(client, m, c) for c in chats[:4]
                                       for m in (MODEL, ADAPTED)))
        engines = client.app.state.engines
        assert engines[ADAPTED].base is engines[MODEL]  # one engine, one copy of the base
        hello = engines[MODEL].last_hello or {}
    print(f"\nserved on llama.cpp: base format rate {format_rate(base):.2f}, "
          f"{ADAPTED} {format_rate(tuned):.2f}")
    assert format_rate(base) == 0.0
    assert format_rate(tuned) >= 0.9, tuned
    assert mixed[0::2] == base[:4] and mixed[1::2] == tuned[:4]  # same answers when mixed
    assert hello.get("adapters", {}).get("loaded") == ["acme"]


def test_an_adapter_on_another_base_is_refused(house_adapter, tmp_path: Path) -> None:
    from autoglm.engine.catalog import embedded_model_path

    data_dir = house_adapter["data_dir"]
    other = tmp_path / "other.gguf"
    shutil.copyfile(embedded_model_path(), other)
    with other.open("ab") as fh:
        fh.write(b"\0" * 32)  # other bytes: another digest
    settings = make_settings(data_dir, model_path=other, model_trust="any", adapters=["acme"])
    with pytest.raises(ConfigError, match="trained on base 'smollm2-135m-instruct'.*the model "
                       "loaded is 'other'"):
        build_engines(settings, tmp_path)
    with pytest.raises(ConfigError, match="is a LoRA adapter, not a model"):
        build_engines(make_settings(data_dir, model="acme"), tmp_path)
    Registry(data_dir).get("acme")  # still registered, untouched


def test_gateway_workers_attach_the_adapter_to_the_shared_engine(house_adapter,
                                                                 tmp_path: Path) -> None:
    settings = make_settings(house_adapter["data_dir"], adapters=["acme"])
    engines = build_engines(settings, tmp_path)
    specs = [e.attach_spec() for e in engines.values()][::-1]  # adapter first: order-proof
    attached = attach_engines(settings, specs)
    assert set(attached) == {MODEL, ADAPTED}
    assert isinstance(attached[ADAPTED], AdapterEngine)
    assert attached[ADAPTED].base is attached[MODEL]
    assert attached[ADAPTED].queue is attached[MODEL].queue


def test_vllm_children_are_started_with_the_adapters(tmp_path: Path) -> None:
    """GPU pools: the PEFT directories go to vLLM's LoRA support (no vLLM here: the
    command line is what is checked)."""
    from autoglm.engine.vllm.gpus import Gpu
    from autoglm.engine.vllm.managed import ManagedVllmEngine
    from autoglm.settings import Settings

    model_dir = tmp_path / "Qwen2.5-7B-Instruct"
    model_dir.mkdir()
    settings = Settings(data_dir=tmp_path / "data", engine="vllm")
    engine = ManagedVllmEngine(settings, model_dir, "qwen",
                               [[Gpu(0, "NVIDIA H100 80GB HBM3", 70000, 81559)]],
                               lora_modules={"qwen:acme": tmp_path / "acme" / "peft",
                                             "qwen:legal": tmp_path / "legal" / "peft"},
                               max_lora_rank=12)
    argv = engine._argv(engine.children[0])
    assert argv[argv.index("--max-loras") + 1] == "2"
    assert argv[argv.index("--max-lora-rank") + 1] == "16"  # vLLM's next allowed rank
    i = argv.index("--lora-modules")
    assert argv[i + 1:i + 3] == [f"qwen:acme={tmp_path}/acme/peft",
                                 f"qwen:legal={tmp_path}/legal/peft"]
    assert "--enable-lora" in argv


def test_the_engine_checks_the_base_digest_recorded_in_the_adapter(house_adapter,
                                                                   bundled_base) -> None:
    from autoglm.engine.llamacpp.lora import AdapterSet
    from autoglm.engine.llamacpp.model import ContextConfig, LlamaModel
    from autoglm.finetune.register import adapter_gguf

    gguf = adapter_gguf(house_adapter["entry"])
    model = LlamaModel(bundled_base[0].path, ContextConfig(1, 128, 32, 1))
    try:
        adapters = AdapterSet(model)
        with pytest.raises(ConfigError, match="trained on another base"):
            adapters.load("acme", gguf, "0" * 64)
        adapters.load("acme", gguf, bundled_base[0].sha256)
        adapters.apply("acme")
        adapters.apply("acme")  # already applied: no switch
        adapters.apply(None)
        assert adapters.names == ["acme"] and adapters.switches == 2
    finally:
        model.close()
