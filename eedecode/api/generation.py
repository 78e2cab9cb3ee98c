"""``eedecode.generate``: a drop-in for Hugging Face ``model.generate`` with self-speculative decoding.

Arguments and behaviour follow HF ``generate()``: settings come from the model's
``generation_config``, then a ``generation_config`` argument, then keyword arguments; the result is
``[batch, prompt + new]`` token ids (rows that stop early are padded with ``pad_token_id``); EOS,
``max_new_tokens`` and ``stopping_criteria`` end a row exactly where HF's greedy loop ends it;
``streamer`` receives the prompt, then the new tokens as they are accepted, then ``end()``.
HF's names for this feature, ``assistant_early_exit`` and ``num_assistant_tokens``, are aliases of
``exit_layer`` and ``num_speculations``.

Every argument is checked before anything runs: a bad one raises with the argument's name and
the allowed values, and nothing reaches the streamer.
"""

from __future__ import annotations

import time

import torch
from transformers import GenerationConfig

from ..engine.chooser import TokenChooser
from ..engine.decoder import Decoder, DecodeStats
from ..engine.processors import LogitsPipeline
from ..model.compat import check_generation, check_supported
from ..model.layer_ops import execution_device
from ..model.runner import ModelRunner
from ..model.threads import auto_threads, threads
from ..modes import get_mode
from .outputs import GenerateOutput, GenerationStats
from .plan import DecodingConfig, Plan, options_dict, prepare
from .validation import check_call

Tensor = torch.Tensor


# -- the loop --------------------------------------------------------------------------------------
@torch.no_grad()
def generate(
    model,
    input_ids: Tensor | None = None,
    attention_mask: Tensor | None = None,
    *,
    mode: str | None = None,
    generation_config: GenerationConfig | None = None,
    stopping_criteria=None,
    streamer=None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    **kwargs,
):
    """Generate like ``model.generate(input_ids, attention_mask, ...)`` with a decoding ``mode``.
    The default is ``adaptive`` (it chooses the exit layer, the draft length and lookup drafts as
    it runs, and falls back to plain decoding where drafts do not pay); given a static setting
    (an int ``exit_layer``, ``num_speculations``, ...) it is ``self_speculative``: draft with the
    model's own first ``exit_layer`` layers, verify ``num_speculations`` drafts per round.

    Keyword arguments are Hugging Face ``GenerationConfig`` fields (``max_new_tokens``,
    ``do_sample``, ``temperature``, ``top_k``, ``top_p``, ``repetition_penalty``, ``eos_token_id``,
    ``num_return_sequences``, ``output_scores``, ``return_dict_in_generate``, ...), HF's call
    arguments ``logits_processor``, ``prefix_allowed_tokens_fn`` and ``tokenizer`` (for
    ``stop_strings``), and the mode's own settings (``exit_layer``, ``num_speculations``,
    ``draft_confidence_threshold`` for ``self_speculative``; HF's ``assistant_early_exit``,
    ``num_assistant_tokens``, ``assistant_confidence_threshold`` and
    ``num_assistant_tokens_schedule`` are aliases). Defaults come from the model's generation
    config as HF applies them. Returns a LongTensor ``[batch, prompt + new]``, or a
    :class:`GenerateOutput` when ``return_dict_in_generate=True``. Sampling draws from
    ``generator`` (or a generator seeded with ``seed``, or torch's global generator); a seed
    reproduces a sample in a fixed mode, not in the adaptive one, whose drafting choices depend on
    measured timings (its samples follow the same distribution all the same).
    Every argument is checked before anything runs: a bad one raises with its name and the
    allowed values, and nothing reaches the streamer.
    """
    check_supported(model)  # what the model is, and modules eedecode would not run: refused
    plan = prepare(model, input_ids, attention_mask, mode, generation_config, kwargs, stopping_criteria)
    cfg = plan.config
    device = execution_device(model.model.embed_tokens)
    check_generation(model, plan.input_ids.shape[1] + cfg.max_new_tokens, cfg.mode != "autoregressive")
    B = plan.input_ids.shape[0]
    stopping = len(plan.stopping_criteria) > 0
    check_call(streamer, generator, seed, B, stopping, cfg.pad_token_id, cfg.eos_token_id, device)
    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    pipeline = LogitsPipeline(plan.processors)
    if pipeline.stateful and cfg.mode != "autoregressive":
        raise ValueError(
            f"watermarking_config: {pipeline.stateful[0]} updates its state on every call and cannot "
            "score drafts that may be rejected; use mode='autoregressive'"
        )
    chooser = TokenChooser(cfg.do_sample, pipeline, generator)
    chooser.record = plan.output_scores or plan.output_logits
    # Everything is checked: now the model is run (its weights packed beside it, not changed).
    count = plan.num_threads if plan.num_threads is not None else auto_threads(model, device)
    with threads(count):
        runner = ModelRunner(model, pack=plan.pack)
        sequences, stats, records = run(runner, plan, chooser, streamer)
    if not plan.return_dict:
        return sequences
    scores, logits = _per_step(records) if records else (None, None)
    return GenerateOutput(
        sequences=sequences,
        scores=scores if plan.output_scores else None,
        logits=logits if plan.output_logits else None,
        stats=stats,
    )


def run(runner: ModelRunner, plan: Plan, chooser: TokenChooser, streamer=None):
    """The validated generation loop; returns ``(sequences, GenerationStats, records)``."""
    t0 = time.perf_counter()
    config = plan.config
    input_ids = plan.input_ids
    mode = get_mode(config.mode)(config.options, runner)
    decoder = Decoder(
        runner, chooser, mode, input_ids, config.max_new_tokens, config.eos_token_id, config.pad_token_id
    )
    # Tokens come back to the host only for a streamer or stopping criteria.
    criteria = plan.stopping_criteria
    want_tokens = streamer is not None or len(criteria) > 0
    stopper = _CriteriaStopper(decoder.state.prompt, criteria) if len(criteria) else None
    if streamer is not None:
        streamer.put(input_ids.cpu())
    view = decoder.prefill(input_ids, plan.attention_mask, want_tokens)
    while True:
        if stopper is not None:
            view = stopper.apply(decoder, view)
        if streamer is not None and view.kept[0]:
            streamer.put(torch.tensor(view.kept[0]))
        if not view.running:
            break
        view = decoder.step(view.max_remaining, want_tokens)
    if streamer is not None:
        streamer.end()
    mode.finish()
    sequences = decoder.output(input_ids, config.pad_token_id)
    new = int(decoder.state.out_len.sum())
    stats = _public_stats(config, mode, decoder.stats(), new, t0, input_ids.shape[0])
    return sequences, stats, _records(decoder)


def _records(decoder: Decoder):
    """Per row, the logits and scores of the tokens it emitted: ``[(logits [n_b, V], scores)]``."""
    if not decoder.records:
        return None
    out = []
    for b in range(decoder.state.out_len.shape[0]):
        pairs = [(lg[b, : int(k[b])], sc[b, : int(k[b])]) for lg, sc, k in decoder.records]
        out.append((torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])))
    return out


def _per_step(records):
    """HF's layout: one ``[B, V]`` tensor per generated step (scores, then logits); rows that
    ended earlier hold zeros there."""
    steps = max(r[0].shape[0] for r in records)
    V = records[0][0].shape[-1]

    def stack(which):
        full = torch.zeros(len(records), steps, V, device=records[0][which].device)
        for b, r in enumerate(records):
            full[b, : r[which].shape[0]] = r[which]
        return tuple(full[:, t] for t in range(steps))

    return stack(1), stack(0)


class _CriteriaStopper:
    """User stopping criteria, evaluated after every new token of every row as HF's greedy loop
    does (host side: this path alone loops over rows)."""

    def __init__(self, input_ids: Tensor, criteria):
        self.prompt = input_ids
        self.criteria = criteria
        self.tokens: list[list[int]] = [[] for _ in range(input_ids.shape[0])]

    def apply(self, decoder, view):
        kept = view.kept
        for b, new in enumerate(kept):
            for j, t in enumerate(new):
                self.tokens[b].append(t)
                ids = torch.cat([self.prompt[b], self.prompt.new_tensor(self.tokens[b])])[None]
                if bool(torch.as_tensor(self.criteria(ids, None)).any()):
                    kept[b] = new[: j + 1]
                    view = decoder.truncate(b, len(self.tokens[b]))
                    break
        view.kept = kept
        return view


def _public_stats(config: DecodingConfig, mode, s: DecodeStats, new_tokens: int, t0: float, batch: int):
    wall = time.perf_counter() - t0
    # the rounds after the prefill (whose token per row is no round's): what drafting changes
    decode_rate = (new_tokens - batch) / max(wall - s.prefill_time_s, 1e-9)
    estimate = mode.speedup_over_plain(s, decode_rate)
    return GenerationStats(
        mode=config.mode,
        options=options_dict(config),
        description=mode.describe(),
        rounds=s.rounds,
        drafted_tokens=s.drafted_tokens,
        accepted_tokens=s.accepted_tokens,
        new_tokens=new_tokens,
        accepted_length_histogram=list(s.accepted_length_histogram),
        wall_time_s=wall,
        prefill_time_s=s.prefill_time_s,
        row_rounds=s.row_rounds,
        details=mode.report(),
        speedup_over_plain=None if estimate is None else estimate[0],
        speedup_source=None if estimate is None else estimate[1],
    )
