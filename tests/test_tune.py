"""``eedecode tune``: the layer-set search and token ranking on known answers, and the policy file
it writes driving the adaptive mode (layer-skip drafts and a draft vocabulary stay lossless)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import silent_upper_layers, tiny_model

import eedecode
from eedecode.model import demo
from eedecode.model.runner import ModelRunner
from eedecode.modes.adaptive import options as adaptive_options
from eedecode.modes.adaptive import planner, policy_file
from eedecode.modes.adaptive.arms import Arm
from eedecode.modes.adaptive.bandit import Bandit
from eedecode.modes.adaptive.store import Policy, Tuned
from eedecode.modes.adaptive.tune import predicted_speedup, search_skip_layers, token_ranking


def test_predicted_speedup_on_hand_numbers():
    # a = 0.5, k = 4: (1 - 0.5^5) / 0.5 = 1.9375 tokens; cost 4 * 2/8 + 1 = 2
    assert predicted_speedup(0.5, 2, 8) == pytest.approx(1.9375 / 2)
    assert predicted_speedup(1.0, 8, 8) == pytest.approx(5 / 5)  # every layer: no gain


def test_layer_search_drops_the_layers_that_add_nothing():
    model = silent_upper_layers(tiny_model("llama"), first=2)
    runner = ModelRunner(model)
    blocks = torch.randint(3, 97, (2, 24), generator=torch.Generator().manual_seed(0))
    layers, agreement, speed = search_skip_layers(runner, blocks)
    assert layers == [0, 1] and agreement == 1.0
    assert speed == pytest.approx(predicted_speedup(1.0, 2, 6))


def test_layer_search_offers_nothing_when_every_layer_matters():
    runner = ModelRunner(tiny_model("llama"))  # random layers: dropping any changes the top-1
    blocks = torch.randint(3, 97, (2, 24), generator=torch.Generator().manual_seed(0))
    layers, _, speed = search_skip_layers(runner, blocks)
    assert layers == [] and speed == pytest.approx(predicted_speedup(1.0, 6, 6))


def test_token_ranking_counts_tokens():
    class Tok:
        def __call__(self, text):
            return type("E", (), {"input_ids": [int(c) for c in text]})()

    assert token_ranking(Tok(), ["1213", "3"]) == [1, 3, 2]


def test_skip_arm_and_draft_vocab_are_lossless(tmp_path, monkeypatch):
    model = tiny_model("qwen2", eos_token_id=None)
    x = torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(1))
    ref = model.generate(x, max_new_tokens=30, do_sample=False, pad_token_id=0)
    path = tmp_path / "policy.json"
    policy_file.save(Policy([], Bandit([]), tuned=Tuned((0, 2, 5), tuple(range(96, 0, -1)))), path)
    skip = Arm("skip", threshold=0.0, max_drafts=4, layers=(0, 2, 5))
    exit_ = Arm("exit", exit_layer=2, threshold=0.0, max_drafts=4)
    monkeypatch.setattr(planner, "PAYS", 0.0)  # offered whatever the prompt's probe predicts
    for arm in (skip, exit_):
        monkeypatch.setattr(adaptive_options, "make_arms", lambda *a, arm=arm: [arm])
        for kw in ({}, {"draft_vocab": 40}):
            out = eedecode.generate(
                model, x, max_new_tokens=30, policy_in=str(path), return_dict_in_generate=True, **kw
            )
            assert torch.equal(out.sequences, ref), (arm.key, kw)
            assert out.stats.drafted_tokens > 0


def test_draft_vocab_needs_a_tuned_policy():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="draft_vocab: needs policy_in"):
        eedecode.generate(model, torch.tensor([[5, 6]]), draft_vocab=10, max_new_tokens=3)


@pytest.mark.skipif(not (demo.DEMO_DIR / "plain" / "config.json").is_file(), reason="no demo checkpoints")
def test_tune_command_writes_a_policy_the_adaptive_mode_reads(tmp_path):
    out = tmp_path / "policy.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "eedecode.cli", "tune", "--model", "demo-plain", "--num-prompts", "2"]
    cmd += [
        "--max-new-tokens",
        "16",
        "--max-blocks",
        "1",
        "--block-length",
        "64",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    policy = policy_file.load(out)
    # on the 8-layer plain demo model no layer can be dropped at a profit: no skip arm
    assert policy.tuned.skip_layers == () and "no layer set pays" in done.stderr
    assert len(policy.tuned.draft_vocab) > 100
    assert sum(s.rounds for s in policy.bandit.estimates.values()) > 0 and "llama" in policy.model
    assert "policy:" in done.stderr
