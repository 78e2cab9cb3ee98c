"""What a benchmark method is (:class:`Method`): one way to decode a batch greedily, with the hooks
the measurement calls around its timed runs; the speculation settings a run gives every method
(:class:`Speculation`); and the bytes of weights a decoding step reads, the numerator of every
method's share of the memory-bandwidth floor. The methods themselves: :mod:`.methods`."""

from __future__ import annotations

from dataclasses import dataclass

from ..engine.mode import is_int


@dataclass(frozen=True)
class Speculation:
    """The speculation settings one benchmark run gives every method that has them."""

    exit_layer: int | None = None
    num_speculations: int | None = None
    confidence_threshold: float | None = None  # eedecode's draft_confidence_threshold, HF's assistant_...
    prompt_lookup_num_tokens: int = 10  # HF prompt lookup's draft length

    def validate(self, num_layers: int) -> None:
        E, k = self.exit_layer, self.num_speculations
        if not (is_int(E) and 1 <= E <= num_layers - 1):
            raise ValueError(f"exit_layer: must be an int in 1..{num_layers - 1}, got {E!r}")
        if not (is_int(k) and k >= 1):
            raise ValueError(f"num_speculations: must be an int >= 1, got {k!r}")
        t = self.confidence_threshold
        if t is not None and not 0 <= t <= 1:
            raise ValueError(f"confidence_threshold: must be in [0, 1] or None, got {t!r}")
        n = self.prompt_lookup_num_tokens
        if not (is_int(n) and n >= 1):
            raise ValueError(f"prompt_lookup_num_tokens: must be an int >= 1, got {n!r}")


class Method:
    """One way to decode a batch greedily: ``run`` returns ``(sequences [B, P + new], stats)``,
    stats being eedecode's ``GenerationStats`` or None. Given a ``streamer`` (batch size 1), a run
    hands it the prompt, then the new tokens as they come, then ``end()``, as Hugging Face's
    ``generate`` does: the benchmark's latency columns come from it (:mod:`.latency`)."""

    name: str
    display: str
    batch_one_only = False
    #: Runs on a copy of the model whose weights are packed in place (eedecode/model/packing.py):
    #: what that layout alone gives Hugging Face's own forward
    #: (:func:`~eedecode.bench.measure.packed_in_place`). Every other method gets the model as given.
    packed_in_place = False
    in_default = True  # measured when no methods are named
    lossless = True  # greedy output equals HF generate's (else: "identical to HF" is not its test)

    def settings(self, spec: Speculation) -> dict:
        """The speculation settings this method runs with (None ones left out)."""
        return {}

    def validate(self, spec: Speculation, num_layers: int) -> None:
        pass

    def prepare(self, model, ids, mask, max_new_tokens: int, spec: Speculation) -> None:
        """Untimed work before each timed :meth:`run` on this batch (the oracle's reference)."""

    def run(self, model, ids, mask, max_new_tokens: int, spec: Speculation, streamer=None):
        raise NotImplementedError

    def unavailable(self) -> str | None:
        """Why this method cannot run here (a missing optional package), or None: the benchmark
        then skips it and says why."""
        return None

    def setup(self, model, tokenizer=None, source=None) -> None:
        """Before a run: the tokenizer and what the model was loaded from (a path), for methods
        that rebuild the model elsewhere (llama.cpp)."""

    def weight_bytes(self, model) -> int:
        """Bytes of weights one decoding step reads (the floor share's numerator)."""
        return model_weight_bytes(model)

    def close(self) -> None:
        """After a run: free what :meth:`setup` or :meth:`prepare` built."""


def model_weight_bytes(model) -> int:
    """Bytes of weights one full decoding step reads: every decoder layer, the final norm and the LM
    head (an embedding tied to it counted once, an untied one left out: a step reads one row)."""
    inner = model.model
    tensors = {id(p): p for m in (*inner.layers, inner.norm, model.lm_head) for p in m.parameters()}
    return sum(p.numel() * p.element_size() for p in tensors.values())
