"""The mode seam: a new decoding mode is one class, registered once, and generate(), the
command line and the benchmark find it. The toy mode here lives only in this file."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from conftest import cached_tiny_model
from test_sampling import PARAMS, PROMPT, chi_square_p_value, exact_joint, round_joint, sampled_round

import eedecode
from eedecode.drafting.base import Drafter, Proposal
from eedecode.drafting.verify import verify, with_point_masses
from eedecode.engine.acceptance import always_accept
from eedecode.modes import Mode, Round, get_mode, mode_names, option, register, unregister


class FixedTokenDrafter(Drafter):
    """A toy drafter in one small class: proposes the same token ``k`` times per row (point-mass
    drafts, which sampling verifies exactly), and counts what it was told of their fate."""

    name = "fixed"

    def __init__(self, token: int):
        super().__init__()
        self.token, self.accepted = token, []

    def propose(self, state, k: int, stop=None) -> Proposal:
        drafts = torch.full((state.batch_size, k), self.token, dtype=torch.long, device=state.pending.device)
        return with_point_masses(state, Proposal(drafts, None, [], 0, None))

    def observe(self, state, proposal, counts) -> None:
        self.accepted.append((counts - 1).tolist())


@dataclass(frozen=True)
class FixedTokenOptions:
    token: int = option(5, "the token every draft proposes")
    num_speculations: int = option(3, "drafts per round")

    def validate(self, num_layers: int) -> None:
        if not isinstance(self.token, int) or self.token < 0:
            raise ValueError(f"token: must be an int >= 0, got {self.token!r}")


class FixedToken(Mode):
    """A toy mode in one small class: the toy drafter's drafts, verified by every layer (lossless)."""

    name, short = "fixed_token", "ft"
    Options = FixedTokenOptions

    def __init__(self, options, runner):
        super().__init__(options, runner)
        self.drafter = FixedTokenDrafter(options.token)

    @property
    def max_drafts(self) -> int:
        return self.options.num_speculations

    def round(self, state, max_tokens: int) -> Round:
        k = min(self.options.num_speculations, max_tokens - 1)
        proposal = self.drafter.propose(state, k)
        rnd = verify(state, proposal)
        self.drafter.observe(state, proposal, rnd.counts)
        return rnd


@pytest.fixture
def fixed_token_mode():
    register(FixedToken)
    yield FixedToken
    unregister(FixedToken.name)


def test_a_registered_toy_mode_is_reachable_from_generate(fixed_token_mode):
    model = cached_tiny_model("llama", eos_token_id=None)
    ids = torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(0))
    ref = model.generate(ids, max_new_tokens=25, do_sample=False, pad_token_id=0)
    # draft the token the model writes most often, so that some drafts are accepted
    common = int(ref[:, 9:].flatten().bincount().argmax())
    out = eedecode.generate(
        model, ids, mode="fixed_token", token=common, max_new_tokens=25, return_dict_in_generate=True
    )
    assert torch.equal(out.sequences, ref)  # lossless: verification is the full model
    assert out.stats.drafted_tokens > 0 and out.stats.accepted_tokens > 0
    assert out.stats.mode == "fixed_token" and out.stats.options == {"token": common, "num_speculations": 3}


def test_a_toy_mode_samples_exactly_and_the_check_can_fail(fixed_token_mode, small_vocab_model, monkeypatch):
    """The toy mode's sampled rounds follow the target distribution (chi-square against the exact
    joint of the round's tokens); the same check rejects the mode when acceptance always takes
    its drafts."""
    params = PARAMS["plain"]
    exact = round_joint(exact_joint(small_vocab_model, PROMPT, params))
    counts = sampled_round(small_vocab_model, PROMPT, params, "fixed_token", seed=5)
    assert chi_square_p_value(counts, exact) > 1e-3
    wrong = sampled_round(
        small_vocab_model,
        PROMPT,
        params,
        "fixed_token",
        seed=5,
        accept_rule=always_accept,
        monkeypatch=monkeypatch,
    )
    assert chi_square_p_value(wrong, exact) < 1e-6


def test_a_toy_mode_validates_its_settings(fixed_token_mode):
    model = cached_tiny_model("llama")
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(ValueError, match="token: must be an int >= 0"):
        eedecode.generate(model, ids, mode="fixed_token", token=-1)
    with pytest.raises(ValueError, match="exit_layer: not a setting of mode='fixed_token'"):
        eedecode.generate(model, ids, mode="fixed_token", exit_layer=2)


def test_a_toy_mode_gets_command_line_flags(fixed_token_mode):
    from eedecode.cli.main import build_parser

    args = build_parser().parse_args(["generate", "--mode", "fixed_token", "--token", "7", "x"])
    assert args.mode == "fixed_token" and args.token == 7


def test_unregistered_mode_is_a_clear_error():
    assert "fixed_token" not in mode_names()
    with pytest.raises(
        ValueError,
        match=r"mode: must be one of \('adaptive', 'autoregressive', 'early_exit', 'self_speculative'",
    ):
        get_mode("fixed_token")
    with pytest.raises(ValueError, match="mode: must be one of"):
        eedecode.generate(cached_tiny_model("llama"), torch.tensor([[5]]), mode="fixed_token")


def test_registry_rejects_malformed_modes():
    class NoName(Mode):
        def round(self, state, max_tokens):
            raise AssertionError

    with pytest.raises(TypeError, match="needs a class attribute 'name'"):
        register(NoName)

    class Clash(NoName):
        name, short = "clash", "ss"

    with pytest.raises(ValueError, match="short name 'ss' is taken"):
        register(Clash)
