"""In-process references: raw ``llama_cpp.Llama`` and direct batched decode (low-level API).

- ``RawLlama``: the high-level ``Llama.create_chat_completion(stream=True)``, the
  single-stream reference.
- ``DirectBatched``: llama.cpp's batched decode driven through the low-level API with
  the engine's context settings, all N sequences in one ``llama_decode`` per step,
  greedy -- the upper limit for the engine.
"""

from __future__ import annotations

import ctypes
import time
from pathlib import Path

import llama_cpp
from jinja2.sandbox import ImmutableSandboxedEnvironment

from _common import DIRECT, MESSAGES, N_BATCH, RAW, Run, Stream


# --------------------------------------------------------------------------------------
# in-process baselines
# --------------------------------------------------------------------------------------
@llama_cpp.llama_log_callback
def _quiet_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    pass


class RawLlama:
    """High-level ``llama_cpp.Llama``: the single-stream reference."""

    def __init__(self, model_path: Path, ctx: int, threads: int) -> None:
        self.llm = llama_cpp.Llama(
            str(model_path), n_ctx=ctx, n_batch=N_BATCH, n_ubatch=N_BATCH, n_threads=threads,
            n_threads_batch=threads, flash_attn=True, n_gpu_layers=0, verbose=False,
        )

    def run(self, max_tokens: int) -> Run:
        # Forget the previous prompt, or Llama would reuse its KV prefix and skip prefill.
        self.llm.reset()
        st = Stream()
        parts: list[str] = []
        t0 = time.perf_counter()
        for chunk in self.llm.create_chat_completion(
            messages=MESSAGES, max_tokens=max_tokens, temperature=0, stream=True
        ):
            ch = chunk["choices"][0]
            text = ch["delta"].get("content")
            if text:
                if st.ttft_s is None:
                    st.ttft_s = time.perf_counter() - t0
                st.chunks += 1
                parts.append(text)
            if ch.get("finish_reason"):
                st.finish_reason = ch["finish_reason"]
        st.total_s = time.perf_counter() - t0
        st.tokens = st.chunks
        st.text = "".join(parts)
        return Run(RAW, 1, st.total_s, [st])

    def close(self) -> None:
        self.llm.close()


class DirectBatched:
    """llama.cpp batched decode through the low-level API, context set up like the engine.

    N sequences with the same prompt: prompts are prefilled together, then each step
    puts one token per sequence into a single ``llama_decode``; greedy sampling.
    """

    def __init__(self, model_path: Path, slots: int, ctx_per_slot: int, threads: int,
                 ignore_eos: bool) -> None:
        llama_cpp.llama_log_set(_quiet_log, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = 0
        self.model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), mparams)
        if not self.model:
            raise RuntimeError(f"cannot load {model_path}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = slots * ctx_per_slot
        cparams.n_batch = N_BATCH
        cparams.n_ubatch = N_BATCH
        cparams.n_seq_max = slots
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise RuntimeError("cannot create a llama.cpp context")
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.slots = slots
        self.capacity = max(N_BATCH, slots)
        self.batch = llama_cpp.llama_batch_init(self.capacity, 0, 1)
        self.ignore_eos = ignore_eos
        self.prompt = self._chat_prompt()

    def _token_text(self, tok: int) -> str:
        buf = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_token_to_piece(self.vocab, tok, buf, len(buf), 0, True)
        return buf.raw[: max(n, 0)].decode("utf-8", errors="replace")

    def _chat_prompt(self) -> list[int]:
        """The chat template from the GGUF, rendered as the engine renders it."""
        tmpl = llama_cpp.llama_model_chat_template(self.model, None)
        if not tmpl:
            raise RuntimeError("the model has no chat template")
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        text = env.from_string(tmpl.decode()).render(
            messages=MESSAGES, add_generation_prompt=True,
            bos_token=self._token_text(llama_cpp.llama_vocab_bos(self.vocab)),
            eos_token=self._token_text(llama_cpp.llama_vocab_eos(self.vocab)),
        )
        data = text.encode()
        buf = (llama_cpp.llama_token * (len(data) + 8))()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, len(buf), False, True)
        return list(buf[:n])

    def _add(self, tok: int, pos: int, seq: int, logits: bool) -> int:
        b, i = self.batch, self.batch.n_tokens
        b.token[i], b.pos[i], b.n_seq_id[i] = tok, pos, 1
        b.seq_id[i][0], b.logits[i] = seq, logits
        b.n_tokens = i + 1
        return i

    def run(self, n: int, max_tokens: int) -> Run:
        if n > self.slots:
            raise ValueError(f"{n} sequences asked for, but the context was set up for "
                             f"{self.slots} (slots)")
        llama_cpp.llama_memory_clear(self.mem, True)
        samplers = []
        for _ in range(n):
            chain = llama_cpp.llama_sampler_chain_init(
                llama_cpp.llama_sampler_chain_default_params())
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
            samplers.append(chain)
        prompt = self.prompt
        streams = [Stream() for _ in range(n)]
        fed = [0] * n
        pos = [0] * n
        last = [0] * n
        out_idx = [-1] * n
        active = [True] * n
        pieces: list[list[int]] = [[] for _ in range(n)]
        t0 = time.perf_counter()
        try:
            while any(active):
                self.batch.n_tokens = 0
                for s in range(n):  # one token per generating sequence
                    out_idx[s] = -1
                    if active[s] and fed[s] == len(prompt):
                        out_idx[s] = self._add(last[s], pos[s], s, True)
                        pos[s] += 1
                for s in range(n):  # then prompt chunks, as room allows
                    if not active[s] or fed[s] == len(prompt):
                        continue
                    take = min(len(prompt) - fed[s], self.capacity - self.batch.n_tokens)
                    for k in range(take):
                        is_last = fed[s] + k == len(prompt) - 1
                        i = self._add(prompt[fed[s] + k], pos[s], s, is_last)
                        pos[s] += 1
                        if is_last:
                            out_idx[s] = i
                    fed[s] += take
                rc = llama_cpp.llama_decode(self.ctx, self.batch)
                if rc != 0:
                    raise RuntimeError(f"llama_decode failed ({rc})")
                now = time.perf_counter()
                for s in range(n):
                    if out_idx[s] < 0:
                        continue
                    tok = llama_cpp.llama_sampler_sample(samplers[s], self.ctx, out_idx[s])
                    st = streams[s]
                    if st.ttft_s is None:
                        st.ttft_s = now - t0
                    if not self.ignore_eos and llama_cpp.llama_vocab_is_eog(self.vocab, tok):
                        st.finish_reason, st.total_s, active[s] = "stop", now - t0, False
                        continue
                    st.tokens += 1
                    pieces[s].append(tok)
                    last[s] = tok
                    if st.tokens >= max_tokens:
                        st.finish_reason, st.total_s, active[s] = "length", now - t0, False
            wall = time.perf_counter() - t0
        finally:
            for chain in samplers:
                llama_cpp.llama_sampler_free(chain)
            llama_cpp.llama_memory_clear(self.mem, True)
        for s, st in enumerate(streams):
            st.chunks = st.tokens
            st.text = "".join(self._token_text(t) for t in pieces[s][:20])
        return Run(DIRECT, n, wall, streams)

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)
        llama_cpp.llama_model_free(self.model)

