"""What ``generate()`` returns beside the tokens: :class:`GenerationStats`, and Hugging Face's
output object with it (:class:`GenerateOutput`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers.generation.utils import GenerateDecoderOnlyOutput


@dataclass
class GenerationStats:
    """What a generate() call did. Rates are per row-round (one round of one batch row)."""

    mode: str
    options: dict  # the mode's settings
    description: str  # the mode and its settings, in words
    rounds: int
    drafted_tokens: int
    accepted_tokens: int
    new_tokens: int  # tokens returned, all rows
    accepted_length_histogram: list[int]  # [a]: row-rounds in which exactly a drafts were accepted
    wall_time_s: float
    prefill_time_s: float
    row_rounds: int
    details: dict = field(default_factory=dict)  # mode-specific (the adaptive mode: arms pulled, ...)
    #: The rounds' speed over plain decoding on this model (eedecode's own), and how it was had:
    #: measured in plain rounds of this call, or of earlier calls, or estimated from the cost model.
    speedup_over_plain: float | None = None
    speedup_source: str | None = None

    @property
    def exit_layer(self) -> int | None:
        return self.options.get("exit_layer")

    @property
    def num_speculations(self) -> int | None:
        return self.options.get("num_speculations")

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else 0.0

    @property
    def mean_tokens_per_round(self) -> float:
        """Tokens produced per row-round: accepted drafts plus the correction or bonus token."""
        return (self.accepted_tokens + self.row_rounds) / self.row_rounds if self.row_rounds else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.wall_time_s if self.wall_time_s > 0 else 0.0

    def summary(self) -> str:
        """The call in a few lines of words."""
        lines = [
            f"{self.new_tokens} new tokens in {self.wall_time_s:.3f} s ({self.tokens_per_second:.1f} tok/s, "
            f"prefill {self.prefill_time_s * 1e3:.0f} ms); {self.description}"
        ]
        if self.speedup_over_plain is not None:
            lines.append(f"{self.speedup_over_plain:.2f}x plain decoding ({self.speedup_source})")
        if self.drafted_tokens:
            lines.append(
                f"{self.rounds} rounds: {self.accepted_tokens} of {self.drafted_tokens} drafts accepted "
                f"({self.acceptance_rate:.1%}), {self.mean_tokens_per_round:.2f} tokens per round"
            )
            counts = ", ".join(f"{a}: {n}" for a, n in enumerate(self.accepted_length_histogram) if n)
            lines.append(f"drafts accepted per round (accepted: rounds): {counts}")
        else:
            lines.append(f"{self.rounds} steps, no drafts")
        numbers = [f"{k.replace('_', ' ')} {v:.2f}" for k, v in self.details.items() if type(v) is float]
        if numbers:
            lines.append(", ".join(numbers))
        by_arm = self.details.get("rounds_by_arm")
        if by_arm:
            lines.append(
                "rounds by how they drafted: " + ", ".join(f"{n} {arm}" for arm, n in by_arm.items())
            )
        return "\n".join(lines)


@dataclass
class GenerateOutput(GenerateDecoderOnlyOutput):
    """Returned when ``return_dict_in_generate=True``: Hugging Face's output object (attribute and
    key access; ``scores`` / ``logits`` when ``output_scores`` / ``output_logits``), plus ``stats``."""

    stats: GenerationStats | None = None
