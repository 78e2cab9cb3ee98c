"""The adaptive mode's settings and their checks, the draft head they ask for, and the learned
policy a call starts from (kept in the model's memory, or read from ``policy_in``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ...drafting.head import DraftHead
from ...engine.mode import is_int, option
from ...model.memory import memory_of
from ...model.translator import TunedLens, read_lens
from . import policy_file
from .arms import make_arms
from .bandit import Bandit
from .store import Policy

AUTO = "auto"
#: The longest n-gram lookup drafts may match: on a CPU each row keeps an index of its n-grams of
#: every length up to it (:class:`eedecode.drafting.lookup.NgramIndex`), which grows with its square.
LOOKUP_NGRAM_MAX = 8
#: The most drafts a round may verify (tables and buffers grow with it; a call caps it further at
#: its max_new_tokens).
MAX_DRAFTS_LIMIT = 64


@dataclass(frozen=True)
class AdaptiveOptions:
    exit_layer: int | str | None = option(
        AUTO, "'auto' (chosen at run time), or a fixed exit layer 1..L-1", hf_name="assistant_early_exit"
    )
    max_drafts: int = option(6, f"the most drafts a row proposes per round (1..{MAX_DRAFTS_LIMIT})")
    lookup: bool = option(True, "also draft by prompt lookup (n-gram continuation from the context)")
    exit_drafts: bool = option(True, "also draft from exit layers (the model's first layers and its head)")
    lookup_ngram: int = option(3, f"longest n-gram prompt lookup matches (1..{LOOKUP_NGRAM_MAX})")
    lookup_memory: bool = option(
        False, "lookup drafts also from earlier calls' prompts and outputs on this model (CPU)"
    )
    policy_in: str | None = option(None, "start from a saved drafting policy (JSON, e.g. from eedecode tune)")
    policy_out: str | None = option(None, "save the learned drafting policy here (JSON)")
    draft_vocab: int | None = option(
        None, "score drafts over the N tokens most frequent in the tuned corpus (needs policy_in)"
    )
    translator: str | None = option(
        None, "draft through a tuned lens (tuned_lens.safetensors from eedecode agreement --lens tuned)"
    )

    def validate(self, num_layers: int) -> None:
        E = self.exit_layer
        if not (E in (AUTO, None) or (is_int(E) and 1 <= E <= num_layers - 1)):
            allowed = f"an int in 1..{num_layers - 1}" if num_layers > 1 else "none on a 1-layer model"
            raise ValueError(f"exit_layer: must be 'auto' or {allowed}, got {E!r}")
        if not is_int(self.max_drafts) or not 1 <= self.max_drafts <= MAX_DRAFTS_LIMIT:
            raise ValueError(f"max_drafts: must be an int in 1..{MAX_DRAFTS_LIMIT}, got {self.max_drafts!r}")
        for name in ("lookup", "exit_drafts", "lookup_memory"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: must be True or False, got {getattr(self, name)!r}")
        n = self.lookup_ngram
        if not is_int(n) or not 1 <= n <= LOOKUP_NGRAM_MAX:
            raise ValueError(f"lookup_ngram: must be an int in 1..{LOOKUP_NGRAM_MAX}, got {n!r}")
        if self.draft_vocab is not None:
            if not is_int(self.draft_vocab) or self.draft_vocab < 1:
                raise ValueError(f"draft_vocab: must be an int >= 1, got {self.draft_vocab!r}")
            if self.policy_in is None:
                raise ValueError(
                    "draft_vocab: needs policy_in, a policy from `eedecode tune` (it ranks the tokens)"
                )
        if self.lookup_memory and not self.lookup:
            raise ValueError("lookup_memory: needs lookup=True (it extends lookup drafts to earlier calls)")
        if self.lookup_memory and is_int(n) and n < 2:
            raise ValueError(
                f"lookup_memory: needs lookup_ngram >= 2 (it keeps n-grams of 2 or more tokens), got {n}"
            )
        if not (self.lookup or self.exit_drafts):
            raise ValueError(
                "lookup, exit_drafts: both False leaves nothing to draft with; use mode='autoregressive'"
            )
        if self.policy_in is not None and not isinstance(self.policy_in, (str, Path)):
            raise ValueError(f"policy_in: must be a path to a policy file (JSON), got {self.policy_in!r}")
        if self.policy_out is not None:
            out = self.policy_out
            if not isinstance(out, (str, Path)) or Path(out).is_dir() or not Path(out).parent.is_dir():
                raise ValueError(f"policy_out: must be a file path in an existing folder, got {out!r}")
        if self.translator is not None:
            depths = read_lens(self.translator, "translator", num_layers)[1]
            if is_int(E) and E not in depths:
                raise ValueError(
                    f"exit_layer: {self.translator} has no translator for layer {E} (it has {depths})"
                )

    def validate_device(self, device: torch.device) -> None:
        """The checks that need the model's device (before anything runs)."""
        if self.lookup_memory and device.type != "cpu":
            raise ValueError(
                f"lookup_memory: needs a model on the CPU (the host's n-gram index), got one on {device}"
            )


def _file_stamp(path) -> tuple | None:
    """``(mtime, size)`` of a file, so that a changed file is read again; None if unreadable."""
    try:
        st = Path(path).stat()
    except (OSError, TypeError):
        return None
    return st.st_mtime_ns, st.st_size


def _policy_key(options: AdaptiveOptions) -> tuple:
    """The options a policy's estimates depend on (all but ``policy_out``): variants never share."""
    o = options
    return (
        o.exit_layer,
        o.max_drafts,
        o.lookup,
        o.exit_drafts,
        o.lookup_ngram,
        o.lookup_memory,
        o.policy_in,
        _file_stamp(o.policy_in) if o.policy_in is not None else None,  # a rewritten file is read again
        o.draft_vocab,
        o.translator,
        _file_stamp(o.translator) if o.translator is not None else None,
    )


def policy_for(runner, options: AdaptiveOptions) -> Policy:
    """The policy this call starts from, with this call's arms: what the model's memory holds for
    these options (later calls continue from what earlier ones learned), else ``policy_in``
    (checked against the model), else a new one. Raises before anything runs when a file does
    not fit the model."""
    policies = memory_of(runner.model).of_mode("adaptive", dict)
    key = _policy_key(options)
    policy = policies.get(key)
    fingerprint = policy_file.fingerprint(runner.config)
    if policy is None and options.policy_in is not None:
        policy = policy_file.load(options.policy_in, "policy_in", runner.num_layers, runner.vocab_size)
        if policy.model and policy.model != fingerprint:
            raise ValueError(
                f"policy_in: {options.policy_in} was learned on another model ({policy.model}), "
                f"not this one ({fingerprint})"
            )
        _check_vocab(options, policy)
    depths = None
    if options.translator is not None:
        depths = read_lens(options.translator, "translator", runner.num_layers, runner.config.hidden_size)[1]
    skip = policy.tuned.skip_layers if policy is not None else ()
    arms = make_arms(runner.num_layers, options, skip, depths)
    if policy is None:
        policy = Policy(arms, Bandit(arms), fingerprint)
    policy.arms = policy.bandit.arms = arms
    policy.model = fingerprint
    policies[key] = policy
    return policy


def _check_vocab(options: AdaptiveOptions, known: Policy) -> None:
    ranked = len(known.tuned.draft_vocab)
    if options.draft_vocab is not None and ranked == 0:
        raise ValueError(
            f"draft_vocab: {options.policy_in} has no token ranking; write one with `eedecode tune`"
        )
    if options.draft_vocab is not None and options.draft_vocab > ranked:
        raise ValueError(
            f"draft_vocab: {options.policy_in} ranks {ranked} tokens; choose draft_vocab <= {ranked} "
            "(or tune on more text)"
        )


def draft_head(runner, options: AdaptiveOptions, policy: Policy) -> DraftHead | None:
    """The drafts' head when a translator or a draft vocabulary is asked for, else None."""
    vocab = translator = None
    if options.draft_vocab is not None:
        vocab = torch.tensor(policy.tuned.draft_vocab[: options.draft_vocab])
    if options.translator is not None:
        translator = TunedLens.load(
            options.translator, runner.head_device, "translator", runner.num_layers, runner.config.hidden_size
        )
    if vocab is None and translator is None:
        return None
    return DraftHead(runner, vocab, translator)
