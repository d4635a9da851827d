"""The house-format task: the held-out format rate rises from the base's to the adapter's."""

from pathlib import Path

import pytest

from autoglm.finetune.housestyle import format_rate
from autoglm.supply import signing
from autoglm.supply.registry import Registry
from tests.finetune.conftest import needs_train

pytestmark = needs_train


def test_house_format_rate_rises_on_held_out_topics(house_adapter, bundled_base) -> None:
    from peft import PeftModel

    from autoglm.finetune.base import load
    from autoglm.finetune.data import ChatEncoder
    from autoglm.finetune.probe import answers
    from autoglm.finetune.register import peft_dir

    model, tok = load(bundled_base[1])
    tuned = PeftModel.from_pretrained(model, str(peft_dir(house_adapter["entry"])))
    enc = ChatEncoder(tok, 256)
    chats = house_adapter["heldout"]
    before = answers(tuned, enc, chats, max_new_tokens=6, batch_size=16, adapter=False)
    after = answers(tuned, enc, chats, max_new_tokens=6, batch_size=16)
    s = house_adapter["summary"]
    print(f"\nhouse format on {len(chats)} held-out questions: base {format_rate(before):.2f}, "
          f"adapter {format_rate(after):.2f}; {s['steps']} steps in {s['train_seconds']} s "
          f"({s['tokens_per_s']} tokens/s), whole run {house_adapter['seconds']:.1f} s, "
          f"validation loss {[round(v, 3) for _, v in s['evals']]}")
    assert format_rate(before) == 0.0
    assert format_rate(after) >= 0.9, after
    evals = [v for _, v in s["evals"]]
    assert evals[-1] < evals[0]


def test_the_adapter_is_a_model_in_the_registry(house_adapter, bundled_base,
                                                tmp_path: Path) -> None:
    from tests.supply.test_signing import keypair

    reg = Registry(house_adapter["data_dir"])
    entry = reg.get("acme")
    assert entry["kind"] == "adapter" and entry["format"] == "lora"
    assert entry["base"] == {"name": "smollm2-135m-instruct", "sha256": bundled_base[0].sha256}
    assert entry["source"] == "finetune:smollm2-135m-instruct"
    files = {f["path"] for f in entry["manifest"]["files"]}
    assert {"adapter.gguf", "peft/adapter_config.json", "peft/adapter_model.safetensors",
            "training.json"} <= files
    assert reg.verify("acme").intact
    priv, pub = keypair(tmp_path, "ops")
    signed = signing.sign(reg, "acme", priv)
    assert signing.verify(reg, "acme", pub) == signed["signed_by"]
    gguf_file = Path(entry["path"]) / "adapter.gguf"
    original = gguf_file.read_bytes()
    try:
        gguf_file.write_bytes(original[:-4] + bytes(4))
        assert not reg.verify("acme").intact
        with pytest.raises(Exception, match="does not verify"):
            signing.verify(reg, "acme", pub)
    finally:
        gguf_file.write_bytes(original)
        reg.verify("acme")


def test_the_gguf_adapter_computes_what_peft_computes(house_adapter, bundled_base) -> None:
    """llama.cpp with adapter.gguf on the quantized base vs transformers with the peft
    adapter on the float32 base: the same logits but for the base's own quantization
    noise (wrong tensor names, shapes or q/k row order would be far off)."""
    import numpy as np
    import torch
    from llama_cpp import Llama
    from peft import PeftModel

    from autoglm.finetune.base import load
    from autoglm.finetune.register import adapter_gguf, peft_dir

    model, tok = load(bundled_base[1])
    tuned = PeftModel.from_pretrained(model, str(peft_dir(house_adapter["entry"])))
    ids = tok("I have a problem with my docking station. What should I do? [ACME] For")["input_ids"]
    with torch.no_grad():
        hf_on = tuned(torch.tensor([ids])).logits[0].numpy()
        with tuned.disable_adapter():
            hf_off = tuned(torch.tensor([ids])).logits[0].numpy()

    def llama_logits(lora: Path | None) -> np.ndarray:
        llm = Llama(model_path=str(bundled_base[0].path), n_ctx=128, logits_all=True,
                    verbose=False, n_threads=1, lora_path=str(lora) if lora else None)
        llm.eval(ids)
        return np.array(llm.scores[:len(ids)])

    noise = np.abs(llama_logits(None) - hf_off).mean()  # quantized vs float32 base
    diff = np.abs(llama_logits(adapter_gguf(house_adapter["entry"])) - hf_on).mean()
    effect = np.abs(hf_on - hf_off).mean()
    assert effect > 4 * noise  # the adapter changes the logits well beyond the noise
    assert diff < 2 * noise, (diff, noise, effect)
