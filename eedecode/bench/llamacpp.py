"""llama.cpp, the C++ anchor, on the same weights: the benchmark's ``llamacpp_f32`` and
``llamacpp_f16`` methods (:class:`LlamaCpp`), through llama-cpp-python.

The model's weights are written to a temporary GGUF file at the method's precision
(:func:`eedecode.model.gguf_export.write_gguf`: from the ``.gguf`` the model was loaded from, its tensors
dequantised, else from the model's parameters) and loaded once, outside the timed calls, with
``n_threads`` = torch's thread count and a KV cache in the weights' precision. A timed call feeds
the prompt's token ids, then decodes greedily (llama.cpp's greedy sampler: the first largest
logit) until EOS or ``max_new_tokens``; tokenisation does not enter. Batch size 1 only. A
streamer gets each token as llama.cpp samples it (the latency columns: one timestamp per step).
The model itself is only read (:mod:`eedecode.model.gguf_export` converts, it does not modify).

llama-cpp-python is an optional extra built from source for this CPU (docs/benchmarks.md); when it
is absent the methods are skipped with a message saying how to install it.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
import weakref
from pathlib import Path

import torch

from .method import Method

INSTALL = 'CMAKE_ARGS="-DGGML_NATIVE=ON" pip install "eedecode[llamacpp]"'
#: GGML's type ids of the KV cache for each weight precision (ggml_type: F32 = 0, F16 = 1).
KV_TYPES = {"F32": 0, "F16": 1}


def missing() -> str | None:
    """Why llama.cpp cannot run here, or None when it can."""
    for module, package in (("llama_cpp", "llama-cpp-python"), ("gguf", "gguf")):
        if importlib.util.find_spec(module) is None:
            return f"{package} is not installed; install the extra with `{INSTALL}`"
    return None


class LlamaCppEngine:
    """A model's weights as a GGUF file at ``dtype``, loaded by llama.cpp; greedy decoding of
    token ids. :meth:`close` frees it and deletes the file."""

    def __init__(self, model, dtype: str = "F32", tokenizer=None, source=None, threads: int | None = None):
        reason = missing()
        if reason is not None:
            raise ImportError(reason)
        import llama_cpp

        from ..model.gguf_export import write_gguf

        self.dtype = dtype
        self._dir = tempfile.mkdtemp(prefix="eedecode-gguf-")
        # the file goes on close(), else when the engine is collected (a method time_methods made
        # from its name, at its end) or when Python exits
        self._remove = weakref.finalize(self, shutil.rmtree, self._dir, True)
        self.path = write_gguf(model, Path(self._dir) / f"model-{dtype}.gguf", tokenizer, dtype, source)
        threads = threads or torch.get_num_threads()
        n_ctx = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
        self.llm = llama_cpp.Llama(
            model_path=str(self.path),
            n_ctx=min(n_ctx, 4096),
            n_batch=512,
            n_threads=threads,
            n_threads_batch=threads,
            type_k=KV_TYPES[dtype],
            type_v=KV_TYPES[dtype],
            verbose=False,
        )
        self._sampler = llama_cpp.llama_sampler_init_greedy()
        eos = model.generation_config.eos_token_id
        self.eos = set() if eos is None else {eos} if isinstance(eos, int) else set(eos)

    def greedy(self, prompt: list[int], max_new_tokens: int, on_token=None) -> list[int]:
        """The new tokens of greedy decoding after ``prompt``, up to and including EOS;
        ``on_token(token)`` is called as each is sampled."""
        import llama_cpp

        llm, new = self.llm, []
        llm.reset()
        llm.eval(prompt)
        while True:
            token = llama_cpp.llama_sampler_sample(self._sampler, llm.ctx, -1)
            new.append(token)
            if on_token is not None:
                on_token(token)
            if token in self.eos or len(new) == max_new_tokens:
                return new
            llm.eval([token])

    def weight_bytes(self) -> int:
        from ..model.gguf_export import gguf_weight_bytes

        return gguf_weight_bytes(self.path)

    def close(self) -> None:
        if self.llm is not None:
            import llama_cpp

            llama_cpp.llama_sampler_free(self._sampler)
            self.llm.close()
            self.llm = None
        self._remove()


class LlamaCpp(Method):
    """llama.cpp greedy decoding of the model's weights written as GGUF at ``dtype``
    (:class:`LlamaCppEngine`), built once per model in :meth:`prepare`, outside the timed
    calls. Opt-in: it writes a copy of the weights and needs an optional extra."""

    batch_one_only = True
    in_default = False

    def __init__(self, dtype: str = "F32"):
        self.dtype = dtype
        self.name, self.display = f"llamacpp_{dtype.lower()}", f"llama.cpp ({dtype})"
        self.tokenizer = self.source = None
        self._engine = self._for = None

    def unavailable(self):
        return missing()

    def setup(self, model, tokenizer=None, source=None):
        self.tokenizer, self.source = tokenizer, source

    def engine(self, model):
        """The llama.cpp engine of ``model``'s weights (written and loaded on first use)."""
        if self._for is not model:
            reason = missing()
            if reason is not None:
                raise ImportError(f"{self.name}: {reason}")
            self.close()
            self._engine = LlamaCppEngine(model, self.dtype, self.tokenizer, self.source)
            self._for = model
        return self._engine

    def weight_bytes(self, model):
        return self.engine(model).weight_bytes()

    def prepare(self, model, ids, mask, max_new_tokens, spec):
        self.engine(model)

    def run(self, model, ids, mask, max_new_tokens, spec, streamer=None):
        if ids.shape[0] != 1:
            raise ValueError(f"{self.name}: batch size 1 only, got {ids.shape[0]}")
        on_token = None
        if streamer is not None:  # as HF generate: the prompt, each new token, then end()
            streamer.put(ids.cpu())
            on_token = lambda token: streamer.put(torch.tensor([token]))
        new = self.engine(model).greedy(ids[0].tolist(), max_new_tokens, on_token)
        if streamer is not None:
            streamer.end()
        return torch.cat([ids, torch.tensor([new], dtype=ids.dtype, device=ids.device)], 1), None

    def close(self):
        if self._engine is not None:
            self._engine.close()
        self._engine = self._for = None
