"""The cost model: the measured verification table (kept in the model's memory), a draft step's
share of the weights, and the round's arithmetic (expected tokens, ideal speed-up)."""

from __future__ import annotations

import pytest
from conftest import cached_tiny_model

from eedecode.model.costs import (
    block_costs,
    expected_tokens_per_round,
    ideal_speedup,
    layer_cost,
    preferred_block_sizes,
)
from eedecode.model.memory import memory_of
from eedecode.model.runner import ModelRunner


def test_block_costs_are_relative_and_measured_once_per_model():
    model = cached_tiny_model("llama")
    memory_of(model).reset()
    runner = ModelRunner(model)
    costs = block_costs(runner, 2, 5)
    assert len(costs) == 5 and costs[0] == 1.0 and all(c > 0 for c in costs)
    assert block_costs(runner, 2, 5) is costs  # kept in the model's memory
    assert block_costs(ModelRunner(model), 2, 5) is costs
    assert memory_of(model).block_costs[(2, 5)] is costs
    memory_of(model).reset()  # forgotten on request
    assert block_costs(runner, 2, 5) is not costs


def test_preferred_block_sizes_skip_blocks_a_larger_one_undercuts():
    assert preferred_block_sizes([1.0, 1.15, 1.36, 1.44, 1.44, 1.37, 1.5]) == [1, 2, 3, 6, 7]
    assert preferred_block_sizes([1.0, 2.0, 3.0]) == [1, 2, 3]  # compute-bound: every token costs
    assert preferred_block_sizes([1.0, 0.9]) == [2]


def test_a_draft_step_costs_its_share_of_the_weights():
    model = cached_tiny_model("llama")
    runner = ModelRunner(model)
    L = runner.num_layers
    per_layer = sum(p.numel() for p in model.model.layers[0].parameters())
    head = model.lm_head.weight.numel()
    assert layer_cost(runner, 2) == pytest.approx((2 * per_layer + head) / (L * per_layer + head))
    assert layer_cost(runner, L) == pytest.approx(1.0)


def test_the_rounds_arithmetic():
    assert ideal_speedup(3.0, 4.0, 0.25, 1.0) == pytest.approx(1.5)
    assert ideal_speedup(1.0, 0.0, 0.3, 1.0) == 1.0  # no drafts: the autoregressive step
    assert expected_tokens_per_round(0.0, 4) == 1.0
    assert expected_tokens_per_round(1.0, 4) == 5.0  # every draft accepted
    assert expected_tokens_per_round(0.5, 1) == pytest.approx(1.5)
    a, k, c = 0.8, 2, 0.5  # (1 + a + a^2) / (k c + 1)
    assert ideal_speedup(expected_tokens_per_round(a, k), k, c, 1.0) == pytest.approx(2.44 / 2.0)
