"""The verification cost table: measured once per model and batch size, relative to one token."""

from __future__ import annotations

from conftest import cached_tiny_model

from eedecode.model.costs import preferred_block_sizes
from eedecode.model.runner import ModelRunner


def test_block_costs_are_relative_and_measured_once():
    runner = ModelRunner(cached_tiny_model("llama"))
    costs = runner.block_costs(2, 5)
    assert len(costs) == 5 and costs[0] == 1.0 and all(c > 0 for c in costs)
    assert runner.block_costs(2, 5) is costs  # kept while the model lives
    assert ModelRunner(runner.model).block_costs(2, 5) is costs
    assert set(runner.preferred_block_sizes(2, 5)) <= set(range(1, 6))


def test_preferred_block_sizes_skip_blocks_a_larger_one_undercuts():
    assert preferred_block_sizes([1.0, 1.15, 1.36, 1.44, 1.44, 1.37, 1.5]) == [1, 2, 3, 6, 7]
    assert preferred_block_sizes([1.0, 2.0, 3.0]) == [1, 2, 3]  # compute-bound: every token costs
    assert preferred_block_sizes([1.0, 0.9]) == [2]
