"""benchmarks/projection.py: step costs of a synthetic shape, and the speed-up the cost model
predicts at the acceptance rates LayerSkip published."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def projection():
    spec = importlib.util.spec_from_file_location("projection", ROOT / "benchmarks" / "projection.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["projection"] = module
    spec.loader.exec_module(module)
    return module


def test_prediction_is_the_cost_model(projection):
    v = {1: 1.2, 2: 1.3, 6: 1.8}
    # (1 - a^(k+1)) / (1 - a) tokens per round over k*c + v_k
    assert projection.predict(0.5, 2, 0.25, v) == pytest.approx((1 - 0.5**3) / 0.5 / (2 * 0.25 + 1.3))
    assert projection.predict(0.9, 0, 0.25, v) == 1.0  # no drafting
    # a published share of drafts accepted at k: 1 + share*k tokens a round at that k
    assert projection.predict_at_published(0.5, 6, 0.25, v) == pytest.approx(4.0 / (6 * 0.25 + 1.8))


def test_the_share_of_drafts_accepted_is_not_the_per_draft_acceptance(projection):
    # with k drafts, alpha (1 - alpha^k) / (1 - alpha) drafts are accepted a round on average
    for alpha, k in ((0.5, 1), (0.9, 6), (0.3, 12)):
        share = alpha * (1 - alpha**k) / (1 - alpha) / k
        assert projection.alpha_from_share(share, k) == pytest.approx(alpha, abs=1e-9)
    assert projection.alpha_from_share(0.795, 6) > 0.9  # LayerSkip's 79.5% at k = 6


def test_the_script_measures_and_tabulates_a_shape(projection, tmp_path, capsys):
    out = tmp_path / "costs.json"
    projection.main(["--shape", "tiny", "--reps", "1", "--prompt-len", "16", "--out", str(out)])
    record = json.loads(out.read_text())
    assert record["shape"] == "tiny" and set(record["costs"]) == {"2"}
    cost = record["costs"]["2"]
    assert 0 < cost["c"] < 1.5 and set(cost["v"]) == {str(k) for k in projection.DRAFT_LENGTHS}
    table = capsys.readouterr().out
    assert table.count("| Llama2-") == len(projection.PUBLISHED)
    assert "from scratch, CNN/DM summarization, greedy | 0.019 | 8 / 24, 12 | 0.186 | 2 |" in table
    # the stored record prints the same tables
    assert projection.main(["--table", str(out)]) == 0
    assert capsys.readouterr().out.strip() == table.split("\n\n", 1)[1].split("\nrecord:")[0].strip()


def test_the_table_of_a_stored_record_picks_the_best_draft_length(projection, tmp_path, capsys):
    # costs fixed here (a tiny model's measured ones are timing noise): a draft step costs 0.25 of a
    # step, verifying k drafts 1 + 0.1 k steps
    v = {str(k): 1 + 0.1 * k for k in projection.DRAFT_LENGTHS}
    record = {"shape": "tiny", "parameters": 10**6, "dtype": "torch.float32"}
    record["costs"] = {"2": {"ar_step_ms": 1.0, "c": 0.25, "v": v}}
    (tmp_path / "r.json").write_text(json.dumps(record))
    assert projection.main(["--table", str(tmp_path / "r.json")]) == 0
    rows = {line.split(" | ")[0].lstrip("| "): line for line in capsys.readouterr().out.splitlines()}
    # at 1.9% of drafts accepted the best is not to draft
    assert rows["Llama2-1.5B from scratch, CNN/DM summarization, greedy"].endswith("| 0 | 1.00× |")
    # at 79.5% (alpha 0.93) drafting pays: the best k beats no drafting, as the cost model says
    summarization = rows["Llama2-7B continual, CNN/DM summarization, greedy"]
    best_k, best = summarization.split(" | ")[-2:]
    costs = {k: 1 + 0.1 * k for k in projection.DRAFT_LENGTHS}
    alpha = projection.alpha_from_share(0.795, 6)
    assert int(best_k) == max(
        projection.DRAFT_LENGTHS, key=lambda k: projection.predict(alpha, k, 0.25, costs)
    )
    assert float(best.rstrip(" |×")) == pytest.approx(
        projection.predict(alpha, int(best_k), 0.25, costs), abs=0.006
    )
    assert float(best.rstrip(" |×")) > 1.5


def test_bad_exit_layers_are_named(projection, capsys):
    with pytest.raises(SystemExit):
        projection.main(["--shape", "tiny", "--exit-layers", "9"])
    assert "--exit-layers: each must be in [1, 7]" in capsys.readouterr().err
