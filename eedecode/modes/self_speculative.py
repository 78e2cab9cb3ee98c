"""Self-speculative decoding (LayerSkip, Elhoushi et al. 2024): draft with the model's own first
``E`` layers and LM head, verify with layers ``[E, L)`` over the exit query cache.

A round, exit layer ``E`` of ``L``, ``k`` drafts:

1. draft: the pending token and each new draft go through layers ``[0, E)`` and the exit head;
   the layer-E states are kept (the *exit query cache*);
2. verify: the last draft goes through ``[0, E)``, then all ``k + 1`` exit states go through
   ``[E, L)`` in one pass — layers ``< E`` never see a draft token twice;
3. accept: a pure rule (greedy or speculative sampling, :mod:`eedecode.engine.acceptance`);
4. the decoder rolls every layer back to the accepted length (a length move, no copy).

``kv_strategy="rerun"`` verifies as Hugging Face's ``assistant_early_exit`` does instead: the
drafts' shallow KV is dropped, and the pending token and all drafts go through every layer at
verification. The greedy tokens are the same; it exists to measure what the exit query cache saves.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..drafting.exit import ExitDrafter
from ..drafting.verify import verify
from ..engine.mode import Mode, Round, is_int, option, register
from ..model.costs import ideal_speedup, layer_cost, measured_block_costs


@dataclass(frozen=True)
class SelfSpeculativeOptions:
    exit_layer: int | None = option(None, "draft with layers [0, E) (1..L-1)", hf_name="assistant_early_exit")
    num_speculations: int = option(4, "drafts per round k (>= 1)", hf_name="num_assistant_tokens")
    draft_confidence_threshold: float | None = option(
        None,
        "stop drafting once no row's draft is at least this likely (0..1)",
        hf_name="assistant_confidence_threshold",
    )
    schedule: str = option(
        "constant",
        "'constant' k, or 'heuristic': +2 after a round that accepts every draft, -1 otherwise",
        hf_name="num_assistant_tokens_schedule",
    )
    kv_strategy: str = option(
        "exit_query",
        "verification: 'exit_query' (layers [E, L) over the drafts' layer-E states) or 'rerun' "
        "(every layer over the drafts again, as HF's assistant_early_exit)",
    )

    def validate(self, num_layers: int) -> None:
        E = self.exit_layer
        if num_layers < 2:
            raise ValueError(
                "exit_layer: there is no exit layer on a 1-layer model (drafting needs a layer below "
                "the last); use mode='autoregressive', or leave the mode unset (the adaptive mode then "
                "decodes plainly)"
            )
        if E is not None and (not is_int(E) or not 1 <= E <= num_layers - 1):
            raise ValueError(
                f"exit_layer: must be an int in 1..{num_layers - 1} for a model of {num_layers} "
                f"layers, got {E!r}"
            )
        if not is_int(self.num_speculations) or self.num_speculations < 1:
            raise ValueError(f"num_speculations: must be an int >= 1, got {self.num_speculations!r}")
        t = self.draft_confidence_threshold
        if t is not None and not (isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t <= 1):
            raise ValueError(f"draft_confidence_threshold: must be a float in [0, 1] or None, got {t!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.kv_strategy not in KV_STRATEGIES:
            raise ValueError(
                f"kv_strategy: must be one of {KV_STRATEGIES} in mode 'self_speculative', got "
                f"{self.kv_strategy!r}"
                + (
                    "; 'copy' and 'recompute' are mode='early_exit''s"
                    if self.kv_strategy in ("copy", "recompute")
                    else ""
                )
            )
        if E is None:  # after the values given were checked, so that a bad one is named first
            raise ValueError(
                f"exit_layer: required for mode='self_speculative' (an int in 1..{num_layers - 1}); "
                "pass exit_layer= (or assistant_early_exit=), or leave the mode unset for the adaptive "
                "mode, which chooses how to draft by itself"
            )


SCHEDULES = ("constant", "heuristic")
KV_STRATEGIES = ("exit_query", "rerun")
#: The draft length the heuristic schedule may grow to (it sizes the cache; HF sets no bound).
HEURISTIC_MAX_DRAFTS = 32


@register
class SelfSpeculative(Mode):
    name, short = "self_speculative", "ss"
    description = "draft with the first E layers, verify with the rest over the exit query cache"
    Options = SelfSpeculativeOptions

    def __init__(self, options, runner):
        super().__init__(options, runner)
        self.k = options.num_speculations  # the current draft length (the heuristic schedule moves it)
        self.heuristic = options.schedule == "heuristic"
        self.observes_counts = self.heuristic
        self.drafted_last = 0
        self.drafter = ExitDrafter(options.exit_layer, rerun=options.kv_strategy == "rerun")

    @property
    def max_drafts(self) -> int:
        k = self.options.num_speculations
        return max(k, HEURISTIC_MAX_DRAFTS) if self.heuristic else k

    def observe(self, rnd: Round, view) -> None:
        """HF's heuristic schedule: two more drafts after a round in which every running row
        accepted every draft, one fewer (at least one) otherwise."""
        if self.heuristic and view.counts is not None and self.drafted_last:
            produced = [c for c in view.counts if c > 0]
            if produced and min(produced) == self.drafted_last + 1:
                self.k = min(self.k + 2, self.max_drafts)
            else:
                self.k = max(1, self.k - 1)

    def round(self, state, max_tokens: int) -> Round:
        k = min(self.k, max_tokens - 1, self.max_drafts)
        # 1) draft with [0, E) and the exit head; 2) verify with [E, L) over the exit states (or
        # every layer again: "rerun"); 3) accept. The decoder then rolls the cache back (4).
        proposal = self.drafter.propose(state, k, self.options.draft_confidence_threshold)
        self.drafted_last = proposal.k
        return verify(state, proposal)

    def speedup_over_plain(self, stats, decode_rate: float):
        """Estimated by the cost model, when this model's verification table is measured already
        (an adaptive call, the benchmark, or ``eedecode generate`` measure it): the tokens per
        round over a round's cost in plain steps (a draft step by its share of the weights)."""
        if not stats.row_rounds:
            return None
        drafts = stats.drafted_tokens / stats.row_rounds
        k = min(max(round(drafts), 0), self.max_drafts)
        batch = max(round(stats.row_rounds / max(stats.rounds, 1)), 1)
        table = measured_block_costs(self.runner, batch, k + 1)
        if table is None:
            return None
        c = layer_cost(self.runner, self.options.exit_layer)
        tokens = (stats.accepted_tokens + stats.row_rounds) / stats.row_rounds
        return ideal_speedup(tokens, drafts, c, table[k]), "estimated from the cost model"

    def describe(self) -> str:
        o = self.options
        rerun = ", rerun" if o.kv_strategy == "rerun" else ""
        return f"self-speculative E={o.exit_layer} k={o.num_speculations}{rerun}"
