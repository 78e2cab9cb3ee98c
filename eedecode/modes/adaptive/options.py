"""The adaptive mode's settings, their checks, and the arms and draft head they make
(:mod:`eedecode.modes.adaptive.mode`)."""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

from ...drafting.drafters import DraftHead
from ...engine.mode import option
from .policy import Arm, Policy

AUTO = "auto"
#: The longest n-gram lookup drafts may match: on a CPU each row keeps an index of its n-grams of
#: every length up to it (:class:`eedecode.drafting.lookup.NgramIndex`), which grows with its square.
LOOKUP_NGRAM_MAX = 8
#: Exit layers tried when none is given, as fractions of the depth.
EXIT_FRACTIONS = (0.0, 0.125, 0.25, 0.375, 0.5)


@dataclass(frozen=True)
class AdaptiveOptions:
    exit_layer: int | str | None = option(
        AUTO, "'auto' (chosen at run time), or a fixed exit layer 1..L-1", hf_name="assistant_early_exit"
    )
    max_drafts: int = option(6, "the most drafts a row proposes per round (>= 1)")
    lookup: bool = option(True, "also draft by prompt lookup (n-gram continuation from the context)")
    exit_drafts: bool = option(True, "also draft from exit layers (the model's first layers and its head)")
    lookup_ngram: int = option(3, f"longest n-gram prompt lookup matches (1..{LOOKUP_NGRAM_MAX})")
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
        if not (E in (AUTO, None) or (_is_int(E) and 1 <= E <= num_layers - 1)):
            raise ValueError(f"exit_layer: must be 'auto' or an int in 1..{num_layers - 1}, got {E!r}")
        if not _is_int(self.max_drafts) or self.max_drafts < 1:
            raise ValueError(f"max_drafts: must be an int >= 1, got {self.max_drafts!r}")
        if not isinstance(self.lookup, bool):
            raise ValueError(f"lookup: must be True or False, got {self.lookup!r}")
        if not isinstance(self.exit_drafts, bool):
            raise ValueError(f"exit_drafts: must be True or False, got {self.exit_drafts!r}")
        n = self.lookup_ngram
        if not _is_int(n) or not 1 <= n <= LOOKUP_NGRAM_MAX:
            raise ValueError(f"lookup_ngram: must be an int in 1..{LOOKUP_NGRAM_MAX}, got {n!r}")
        if self.draft_vocab is not None:
            if not _is_int(self.draft_vocab) or self.draft_vocab < 1:
                raise ValueError(f"draft_vocab: must be an int >= 1, got {self.draft_vocab!r}")
            if self.policy_in is None:
                raise ValueError(
                    "draft_vocab: needs policy_in, a policy from `eedecode tune` (it ranks the tokens)"
                )
        if not (self.lookup or self.exit_drafts):
            raise ValueError(
                "lookup, exit_drafts: both False leaves nothing to draft with; use mode='autoregressive'"
            )
        ranked = _ranked_tokens(self.policy_in) if self.policy_in is not None else 0
        if self.draft_vocab is not None and ranked == 0:
            raise ValueError(
                f"draft_vocab: {self.policy_in} has no token ranking; write one with `eedecode tune`"
            )
        if self.draft_vocab is not None and self.draft_vocab > ranked:
            raise ValueError(
                f"draft_vocab: {self.policy_in} ranks {ranked} tokens; choose draft_vocab <= {ranked} "
                "(or tune on more text)"
            )
        if self.policy_out is not None:
            out = self.policy_out
            if not isinstance(out, (str, Path)) or Path(out).is_dir() or not Path(out).parent.is_dir():
                raise ValueError(f"policy_out: must be a file path in an existing folder, got {out!r}")
        if self.translator is not None:
            from ...study.tuned_lens import check_lens_file

            depths = check_lens_file(self.translator, "translator", num_layers)
            if _is_int(E) and E not in depths:
                raise ValueError(
                    f"exit_layer: {self.translator} has no translator for layer {E} (it has {depths})"
                )


def _file_stamp(path) -> tuple | None:
    """``(mtime, size)`` of a file, so that a changed file is read again; None if unreadable."""
    try:
        st = Path(path).stat()
    except (OSError, TypeError):
        return None
    return st.st_mtime_ns, st.st_size


def _ranked_tokens(path) -> int:
    """How many tokens the policy file ranks; raises naming ``policy_in`` if it is not one. Read
    again only when the file changes."""
    if not isinstance(path, (str, Path)):
        raise ValueError(f"policy_in: must be a path to a policy file (JSON), got {path!r}")
    return _ranked_tokens_of((str(path), _file_stamp(path)))


@functools.lru_cache(maxsize=16)
def _ranked_tokens_of(key: tuple) -> int:
    return len(Policy.load(key[0], "policy_in").tuned.get("draft_vocab") or [])


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def exit_layer_candidates(num_layers: int) -> list[int]:
    """Exit layers the policy tries on a model of ``num_layers`` layers: 1, then L/8 .. L/2."""
    layers = {max(1, min(num_layers - 1, round(f * num_layers))) for f in EXIT_FRACTIONS}
    return sorted(layers | {1})


def make_arms(
    num_layers: int, options: AdaptiveOptions, tuned: dict | None = None, depths: list[int] | None = None
) -> list[Arm]:
    """The arms of this call: plain decoding, lookup (if enabled), early exit at each candidate
    layer (with a translator: at each layer it translates, ``depths``) and threshold, and drafting
    through a tuned layer set (if ``eedecode tune`` found one)."""
    E = options.exit_layer
    if E not in (AUTO, None):
        exits = [E]
    elif depths:
        exits = sorted(d for d in depths if 1 <= d < num_layers)
    else:
        exits = exit_layer_candidates(num_layers)
    k = options.max_drafts
    arms = [Arm("none")]
    if options.lookup:
        arms.append(Arm("lookup", max_drafts=k))
    if options.exit_drafts:
        for e in exits:
            arms.append(Arm("exit", exit_layer=e, max_drafts=k))  # confidence-stopped drafts
            arms.append(Arm("exit", exit_layer=e, max_drafts=k, fixed=True))  # the length model's
        if options.lookup:  # offered only in batch rounds where some rows found a match and some did not
            arms += [Arm("mixed", exit_layer=e, max_drafts=k) for e in exits]
    skip = (tuned or {}).get("skip_layers")
    if skip:
        arms.append(Arm("skip", max_drafts=k, layers=tuple(skip)))
    return arms


def draft_head(runner, options: AdaptiveOptions, policy: Policy) -> DraftHead | None:
    """The drafts' head when a translator or a draft vocabulary is asked for, else None."""
    vocab = translator = None
    if options.draft_vocab is not None:
        ranked = policy.tuned.get("draft_vocab")
        if not ranked:
            raise ValueError(
                f"draft_vocab: {options.policy_in} has no token ranking; run `eedecode tune` on it"
            )
        vocab = torch.tensor(ranked[: options.draft_vocab])
    if options.translator is not None:
        from ...study.tuned_lens import TunedLens

        translator = TunedLens.load(options.translator, device=runner.head_device)
    if vocab is None and translator is None:
        return None
    return DraftHead(runner, vocab, translator)


#: model -> {drafting options -> Policy}: what this process has learned, per model and per set of
#: options that change the arms or their drafts (so variants never share estimates).
_POLICIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _fingerprint(config) -> str:
    keys = ("model_type", "num_hidden_layers", "hidden_size", "vocab_size", "intermediate_size")
    return "-".join(str(getattr(config, key, "")) for key in keys)


def _policy_key(options: AdaptiveOptions) -> tuple:
    """The options a policy's estimates depend on (all but ``policy_out``)."""
    o = options
    return (
        o.exit_layer,
        o.max_drafts,
        o.lookup,
        o.exit_drafts,
        o.lookup_ngram,
        o.policy_in,
        _file_stamp(o.policy_in) if o.policy_in is not None else None,  # a rewritten file is read again
        o.draft_vocab,
        o.translator,
        _file_stamp(o.translator) if o.translator is not None else None,
    )


def policy_for(runner, options: AdaptiveOptions) -> Policy:
    """The process's policy for this model and these options, with this call's arms. The first
    call with a ``policy_in`` starts from that file; later calls with the same options continue
    from what the process has learned since, until the file changes (then it is read again)."""
    fingerprint = _fingerprint(runner.config)
    key = _policy_key(options)
    cached = _POLICIES.get(runner.model, {}).get(key)
    if cached is not None:
        known = cached
    elif options.policy_in is not None:
        known = Policy.load(options.policy_in, "policy_in")
        if known.model and known.model != fingerprint:
            raise ValueError(
                f"policy_in: {options.policy_in} was learned on another model ({known.model}), "
                f"not this one ({fingerprint})"
            )
    else:
        known = None
    tuned = known.tuned if known else {}
    depths = None
    if options.translator is not None:
        from ...study.tuned_lens import check_lens_file

        depths = check_lens_file(options.translator, "translator", runner.num_layers)
    arms = make_arms(runner.num_layers, options, tuned, depths)
    learned = {"seconds": {}, "calibration": {}, **(known.learned if known else {})}
    policy = Policy(arms, dict(known.stats) if known else {}, fingerprint, dict(tuned), learned)
    policy.calibrations = dict(getattr(known, "calibrations", {})) if cached is not None else {}
    policy.run_lengths = dict(getattr(known, "run_lengths", {})) if cached is not None else {}
    _POLICIES.setdefault(runner.model, {})[key] = policy
    return policy
