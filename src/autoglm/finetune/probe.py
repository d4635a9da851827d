"""Greedy answers of the model being trained (with or without its adapter) to chats.

What the effect of a run is measured with, in the training process itself: the prompts
are built by the same chat template as the training examples (``ChatEncoder``), several
are decoded together (left-padded), and only the answer tokens are returned as text.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from autoglm.finetune.data import ChatEncoder


def answers(model: Any, encoder: ChatEncoder, chats: list[list[dict[str, Any]]], *,
            max_new_tokens: int = 16, batch_size: int = 8, adapter: bool = True) -> list[str]:
    """``chats``: message lists ending with the user's turn. ``adapter=False`` answers
    with the base alone (a peft model's adapter switched off)."""
    import torch

    tok = encoder.tok
    pad = tok.pad_token_id
    off = model.disable_adapter() if not adapter and hasattr(model, "disable_adapter") \
        else nullcontext()
    out: list[str] = []
    was_training = model.training
    model.eval()
    with off, torch.no_grad():
        for i in range(0, len(chats), batch_size):
            prompts = [encoder.prompt_ids(c) for c in chats[i:i + batch_size]]
            width = max(len(p) for p in prompts)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
            device = next(model.parameters()).device
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=pad)
            out += [tok.decode(row[width:], skip_special_tokens=True) for row in gen]
    if was_training:
        model.train()
    return out
