"""Policy files: the adaptive mode's learned state written and read back, every field checked
against the model, errors that name the argument, the file and the field."""

from __future__ import annotations

import json

import pytest

from eedecode.drafting.base import DraftStats
from eedecode.modes.adaptive import policy_file
from eedecode.modes.adaptive.arms import Arm
from eedecode.modes.adaptive.bandit import Bandit, Slot
from eedecode.modes.adaptive.store import Policy, StepTimes, Tuned

NONE, EXIT = Arm("none"), Arm("exit", exit_layer=2, threshold=0.6, max_drafts=6)


def learned() -> Policy:
    arms = [NONE, EXIT]
    p = Policy(arms, Bandit(arms), "llama-8x256", Tuned((0, 1, 3), (5, 7, 2)))
    p.bandit.update(EXIT, 5, 0.5)
    p.bandit.bucket = 4
    p.bandit.update(NONE, 4, 0.1)
    p.drafters["exit:E=2"] = DraftStats.new("cpu", 6)
    p.drafters["exit:E=2"].runs.update([3], [2])
    p.probed["exit:E=2"] = 32
    p.calls = 3
    p.times[1] = StepTimes(plain=0.01, overhead=0.001, verify={(2, 3): 0.012}, draft={"exit:E=2": 0.003})
    return p


def test_a_policy_round_trips(tmp_path):
    p = learned()
    path = tmp_path / "policy.json"
    policy_file.save(p, path)
    q = policy_file.load(path, "policy_in", num_layers=8, vocab_size=97)
    assert q.arms == p.arms and q.model == "llama-8x256" and q.tuned == p.tuned
    assert q.bandit.estimates[Slot(EXIT.key, False, 1)].rate == pytest.approx(10.0)
    assert q.bandit.estimates[Slot("none", False, 4)].pulls == 1
    assert q.times == p.times and q.probed == p.probed and q.calls == 3
    runs = q.draft_stats("exit:E=2", "cpu", 6).runs
    assert runs.state() == p.drafters["exit:E=2"].runs.state()
    policy_file.save(q, path)  # what was read and not used is written back
    assert json.loads(path.read_text())["drafters"].keys() == {"exit:E=2"}


def test_files_that_are_not_policies_are_named(tmp_path):
    with pytest.raises(ValueError, match="policy_in: .*missing.json does not exist"):
        policy_file.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="policy_in: .* is a directory"):
        policy_file.load(tmp_path)
    with pytest.raises(ValueError, match="policy_in: must be a path"):
        policy_file.load(5)
    for text, words in [
        ("not json", "not an eedecode policy file"),
        ("[1, 2]", "the file: expected an object"),
        ('{"format": "other"}', "format: not an eedecode policy file"),
        ('{"format": "eedecode-policy/1"}', "format: not an eedecode policy file of this version"),
    ]:
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(ValueError, match=f"policy_in: .*bad.json.*{words}"):
            policy_file.load(tmp_path / "bad.json")


@pytest.mark.parametrize(
    "edit, where",
    [
        (
            lambda d: d["tuned"].update(skip_layers=[0, 99]),
            r"tuned\.skip_layers\[1\]: expected an int in \[0, 8\)",
        ),
        (lambda d: d["tuned"].update(skip_layers=[-1]), r"tuned\.skip_layers\[0\]"),
        (lambda d: d["tuned"].update(skip_layers="abc"), r"tuned\.skip_layers: expected a list"),
        (lambda d: d["tuned"].update(draft_vocab=[3, 97]), r"tuned\.draft_vocab\[1\]: .* token id"),
        (lambda d: d.update(arms={"kind": "none"}), r"arms: expected a list"),
        (lambda d: d["arms"][1].update(exit_layer=8), r"arms\[1\]\.exit_layer"),
        (lambda d: d["arms"][1].update(kind="warp"), r"arms\[1\]\.kind: expected one of"),
        (lambda d: d["estimates"][0].update(tokens="many"), r"estimates\[0\]\.tokens"),
        (
            lambda d: d["drafters"]["exit:E=2"]["runs"].update(judged=[1.0]),
            r"drafters\['exit:E=2'\]\.runs: accepted and judged",
        ),
        (lambda d: d["drafters"].update(x=[1]), r"drafters\['x'\]: expected an object"),
        (lambda d: d["times"][0]["verify"].append([9, 2, 0.1]), r"times\[0\]\.verify\[1\]\[0\]"),
        (lambda d: d.update(calls=-1), r"calls: expected an int >= 0"),
    ],
)
def test_every_field_is_checked_against_the_model(tmp_path, edit, where):
    data = policy_file.to_json(learned())
    edit(data)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"^policy_in: {tmp_path}.*p.json: {where}"):
        policy_file.load(path, "policy_in", num_layers=8, vocab_size=97)
