"""The adaptive mode: lossless whatever the policy picks, per-row draft lengths, policy state."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHS, cached_tiny_model

import eedecode
from eedecode.drafting.head import DraftHead
from eedecode.drafting.lookup import LookupDrafter
from eedecode.drafting.mixed import MixedDrafter
from eedecode.model.memory import memory_of
from eedecode.modes.adaptive import mode as adaptive
from eedecode.modes.adaptive import options as adaptive_options
from eedecode.modes.adaptive import planner, policy_file, probe
from eedecode.modes.adaptive.arms import Arm, exit_layer_candidates
from eedecode.modes.adaptive.bandit import Bandit, bucket_of
from eedecode.modes.adaptive.store import Policy, Tuned

NEW = 40


@pytest.fixture(autouse=True)
def no_settling(monkeypatch):
    """These tests check what the bandit's arms do; the mode's settling on plain decoding
    (tests/test_settle.py) depends on wall time and would skip them at random."""
    from eedecode.modes.adaptive import settle

    monkeypatch.setattr(settle, "ENABLED", False)


def policies(model) -> dict:
    """The adaptive mode's learned policies for ``model`` (in its memory), by options."""
    return memory_of(model).modes.get("adaptive", {})


def tuned_file(path, vocab) -> None:
    """A policy file as `eedecode tune` writes one, with a token ranking."""
    policy_file.save(Policy([], Bandit([]), tuned=Tuned(draft_vocab=tuple(vocab))), path)


def ids(batch=1, n=9, seed=0):
    return torch.randint(3, 97, (batch, n), generator=torch.Generator().manual_seed(seed))


def repetitive(batch=2):
    """Prompts that repeat themselves, so that lookup drafts exist."""
    base = ids(batch, 6, seed=4)
    return torch.cat([base, base, base[:, :3]], 1)


@pytest.fixture
def only_arms(monkeypatch):
    """Force the policy's arms (one kind of round at a time), offered whatever the prompt's probe
    predicts of them (a tiny random model's exit layers never pay)."""

    def force(*arms):
        monkeypatch.setattr(adaptive_options, "make_arms", lambda *a: list(arms))
        monkeypatch.setattr(planner, "PAYS", 0.0)

    return force


ARMS = {
    "none": Arm("none"),
    "lookup": Arm("lookup", max_drafts=6),
    # a tiny random model is unsure of everything (p(top-1) about 0.013-0.016 over 97 tokens):
    # a threshold in that range stops some rows' drafting early and lets others go on
    "exit1": Arm("exit", exit_layer=1, threshold=0.0137, max_drafts=6),
    "exit3": Arm("exit", exit_layer=3, threshold=0.0137, max_drafts=6),
    "exit_no_stop": Arm("exit", exit_layer=2, threshold=0.0, max_drafts=6),
    "exit_length_model": Arm("exit", exit_layer=2, max_drafts=6, fixed=True),
    "mixed": Arm("mixed", exit_layer=2, threshold=0.0137, max_drafts=6),
}


@pytest.mark.parametrize("arch", ARCHS)
def test_default_call_needs_no_settings_and_equals_hf(arch, monkeypatch):
    model = cached_tiny_model(arch, eos_token_id=None)
    for pays in (planner.PAYS, 0.0):  # as it comes; and with every arm offered (exit drafts run)
        monkeypatch.setattr(planner, "PAYS", pays)
        memory_of(model).reset()
        drafted = 0
        for x in (ids(), repetitive()):
            ref = model.generate(x, max_new_tokens=NEW, do_sample=False, pad_token_id=0)
            out = eedecode.generate(model, x, max_new_tokens=NEW, return_dict_in_generate=True)
            assert out.stats.mode == "adaptive"
            assert torch.equal(out.sequences, ref)
            drafted += sum(n for k, n in out.stats.details["arms"].items() if k.startswith("exit"))
        assert pays > 0 or drafted > 0


@pytest.mark.parametrize("arm", list(ARMS))
def test_every_arm_alone_is_lossless_batch_and_padding(arm, only_arms):
    only_arms(ARMS[arm])
    model = cached_tiny_model("qwen2", eos_token_id=None)
    x = repetitive(3)
    x[0, :2] = 0  # left padding in one row
    mask = (x != 0).long()
    ref = model.generate(x, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=0)
    ar = eedecode.generate(model, x, attention_mask=mask, mode="autoregressive", max_new_tokens=NEW)
    out = eedecode.generate(model, x, attention_mask=mask, max_new_tokens=NEW, return_dict_in_generate=True)
    assert torch.equal(out.sequences, ar) and torch.equal(ar, ref)
    if arm != "none":
        assert out.stats.drafted_tokens > 0
    pulled = out.stats.details["arms"]
    assert set(pulled) <= {ARMS[arm].key, "none"}  # "none": rounds that may emit one token only
    # lookup is offered only where the laggards found a match; the others wherever a round may draft
    assert pulled[ARMS[arm].key] >= out.stats.rounds / (3 if arm == "lookup" else 2)


@pytest.mark.parametrize("arm", ["lookup", "mixed"])
def test_off_a_cpu_the_batched_lookup_search_is_lossless_too(arm, only_arms, monkeypatch):
    """On an accelerator lookup drafts come from a batched search on the device instead of the
    host's n-gram index: the mode as it runs off a CPU (timed by the block cost table, not by
    its rounds), here on a CPU, is lossless too (batch, padding)."""
    only_arms(ARMS["none"], ARMS[arm])
    real_init = adaptive.Adaptive.__init__

    def off_cpu(self, *a, **kw):
        real_init(self, *a, **kw)
        self.on_cpu = False

    monkeypatch.setattr(adaptive.Adaptive, "__init__", off_cpu)
    searched = []
    real = LookupDrafter.search
    monkeypatch.setattr(LookupDrafter, "search", lambda self, *a: searched.append(1) or real(self, *a))
    model = cached_tiny_model("qwen2", eos_token_id=None)
    x = torch.cat([repetitive(2), ids(2, 15, seed=7)])
    x[0, :2] = 0  # left padding in one row
    mask = (x != 0).long()
    ref = model.generate(x, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=0)
    out = eedecode.generate(model, x, attention_mask=mask, max_new_tokens=NEW, return_dict_in_generate=True)
    assert torch.equal(out.sequences, ref)
    assert searched and out.stats.details["arms"].get(ARMS[arm].key, 0) > 0 and out.stats.drafted_tokens > 0


def test_mixed_rounds_give_each_row_its_own_drafter(only_arms, monkeypatch):
    """Rows with a lookup match take lookup drafts, the others exit drafts, in one round; the
    output stays exact, and a batch where every row (or none) matched never mixes."""
    only_arms(ARMS["none"], ARMS["mixed"])
    model = cached_tiny_model("llama", eos_token_id=None)
    x = torch.cat([repetitive(2), ids(2, 15, seed=7)])  # two rows repeat themselves, two do not
    seen = []
    real = MixedDrafter.propose

    def spy(self, state, k, stop=None):
        found = self.lookup.propose(state, k)
        seen.append(((found.counts > 0) & state.active).tolist())
        return real(self, state, k, stop)

    monkeypatch.setattr(MixedDrafter, "propose", spy)
    ref = model.generate(x, max_new_tokens=NEW, do_sample=False, pad_token_id=0)
    out = eedecode.generate(model, x, max_new_tokens=NEW, return_dict_in_generate=True)
    assert torch.equal(out.sequences, ref)
    assert seen and all(any(r) and not all(r) for r in seen)
    assert out.stats.details["arms"].get(ARMS["mixed"].key, 0) == len(seen)
    one = eedecode.generate(model, x[:1], max_new_tokens=NEW, return_dict_in_generate=True)
    assert ARMS["mixed"].key not in one.stats.details["arms"]  # batch 1: nothing to mix
    sampled = eedecode.generate(
        model, x, max_new_tokens=NEW, do_sample=True, seed=0, return_dict_in_generate=True
    )
    assert ARMS["mixed"].key not in sampled.stats.details["arms"]  # greedy only


def test_exit_drafts_off_leaves_lookup_and_plain_steps():
    model = cached_tiny_model("llama", eos_token_id=None)
    x = repetitive(2)
    ref = model.generate(x, max_new_tokens=NEW, do_sample=False, pad_token_id=0)
    out = eedecode.generate(model, x, max_new_tokens=NEW, exit_drafts=False, return_dict_in_generate=True)
    assert torch.equal(out.sequences, ref)
    assert set(out.stats.details["arms"]) <= {"none", "lookup:k=6"} and out.stats.drafted_tokens > 0
    with pytest.raises(ValueError, match="exit_drafts: must be True or False"):
        eedecode.generate(model, x, max_new_tokens=3, exit_drafts="no")


def test_rows_draft_different_lengths(only_arms, monkeypatch):
    """A confidence threshold stops each row at its own first unsure draft: the drafts counted
    per round differ between rows (so between row-rounds), and the output stays exact."""
    only_arms(ARMS["exit1"])
    model = cached_tiny_model("llama", eos_token_id=None)
    counts = []
    real = adaptive.verify

    def spy(state, proposal):
        if proposal.counts is not None:
            counts.append(proposal.counts.tolist())
        return real(state, proposal)

    monkeypatch.setattr(adaptive, "verify", spy)
    x = ids(4, seed=2)
    ref = model.generate(x, max_new_tokens=NEW, do_sample=False, pad_token_id=0)
    assert torch.equal(eedecode.generate(model, x, max_new_tokens=NEW), ref)
    assert any(len(set(c)) > 1 for c in counts), counts


def test_policy_carries_over_and_saves_and_loads(tmp_path):
    model = cached_tiny_model("mistral", eos_token_id=None)
    path = tmp_path / "policy.json"
    eedecode.generate(model, repetitive(), max_new_tokens=NEW, policy_out=str(path))
    saved = policy_file.load(path)
    rounds = sum(s.rounds for s in saved.bandit.estimates.values())
    assert rounds > 0 and saved.model.startswith("mistral")
    out = eedecode.generate(
        model, repetitive(), max_new_tokens=NEW, policy_in=str(path), return_dict_in_generate=True
    )
    assert out.stats.rounds > 0
    other = cached_tiny_model("llama", eos_token_id=None, num_hidden_layers=4)
    with pytest.raises(ValueError, match="policy_in: .* another model"):
        eedecode.generate(other, ids(), max_new_tokens=5, policy_in=str(path))


def test_each_set_of_options_learns_its_own_policy_and_keeps_it_in_process():
    model = cached_tiny_model("llama", eos_token_id=None, num_hidden_layers=5)
    memory_of(model).reset()

    def rounds(**options):
        key = adaptive_options._policy_key(adaptive_options.AdaptiveOptions(**options))
        return sum(s.rounds for s in policies(model)[key].bandit.estimates.values())

    first = eedecode.generate(model, repetitive(), max_new_tokens=NEW, return_dict_in_generate=True).stats
    learned = rounds()  # discounted round counts
    assert first.rounds * 0.9 < learned <= first.rounds
    plain = eedecode.generate(
        model, repetitive(), max_new_tokens=NEW, lookup=False, return_dict_in_generate=True
    )
    assert rounds() == learned  # the variant learned apart
    assert plain.stats.rounds * 0.9 < rounds(lookup=False) <= plain.stats.rounds
    assert not any(k.startswith("lookup") for k in plain.stats.details["arms"])
    again = eedecode.generate(model, repetitive(), max_new_tokens=NEW, return_dict_in_generate=True).stats
    assert rounds() > again.rounds  # carried over from the first call


def test_fixed_exit_layer_and_bad_settings():
    model = cached_tiny_model("llama", eos_token_id=None)
    out = eedecode.generate(
        model, ids(), mode="adaptive", exit_layer=2, max_new_tokens=NEW, return_dict_in_generate=True
    )
    used = [k for k in out.stats.details["arms"] if k.startswith("exit")]
    assert used and all(":E=2:" in k for k in used)  # the layer asked for is offered, whatever it pays
    for kw, words in [
        (dict(exit_layer=9), "exit_layer: must be 'auto' or an int in 1..5"),
        (dict(exit_layer="deep"), "exit_layer: must be 'auto'"),
        (dict(max_drafts=0), r"max_drafts: must be an int in 1\.\.64"),
        (dict(max_drafts=10**6), r"max_drafts: must be an int in 1\.\.64"),
        (dict(lookup="yes"), "lookup: must be True or False"),
        (dict(lookup_ngram=9), r"lookup_ngram: must be an int in 1\.\.8"),
        (dict(lookup_ngram=0), r"lookup_ngram: must be an int in 1\.\.8"),
        # HF's names for the static mode's settings are not the adaptive mode's
        (dict(num_assistant_tokens=3), "num_assistant_tokens: not a setting of mode='adaptive'"),
        (dict(assistant_confidence_threshold=0.5), "assistant_confidence_threshold: not a setting"),
    ]:
        with pytest.raises(ValueError, match=words):
            eedecode.generate(model, ids(), mode="adaptive", max_new_tokens=5, **kw)


class Recorder:
    """A streamer that records every call."""

    def __init__(self):
        self.calls = []

    def put(self, value):
        self.calls.append(("put", value))

    def end(self):
        self.calls.append(("end",))


def test_bad_policy_and_translator_files_are_refused_before_anything_streams(tmp_path):
    import json

    from safetensors.torch import save_file

    from eedecode.model.translator import TunedLens

    model = cached_tiny_model("llama", eos_token_id=None)
    H, L = model.config.hidden_size, model.config.num_hidden_layers
    tuned = tmp_path / "tuned.json"
    tuned_file(tuned, range(50))
    (tmp_path / "corrupt.json").write_text("{")
    (tmp_path / "lens.safetensors").write_text("not a tensor file")
    data = policy_file.to_json(Policy([], Bandit([]), tuned=Tuned((0, 99), ())))
    (tmp_path / "skip.json").write_text(json.dumps(data))
    data["tuned"] = {"skip_layers": [], "draft_vocab": [5, 9999]}
    (tmp_path / "vocab.json").write_text(json.dumps(data))
    TunedLens(H + 1, L, [2]).save(tmp_path / "wide.safetensors")
    TunedLens(H, L, [2]).save(tmp_path / "good.safetensors")
    meta = {"format": "eedecode-tuned-lens", "version": "1", "num_layers": str(L), "hidden_size": str(H)}
    save_file(
        {"translators.2.weight": torch.eye(H)}, str(tmp_path / "missing.safetensors"), {**meta, "depths": "2"}
    )
    save_file({}, str(tmp_path / "meta.safetensors"), {**meta, "num_layers": "many", "depths": ""})
    cases = [
        (dict(policy_in=str(tmp_path / "corrupt.json")), "policy_in: .* not an eedecode policy file"),
        (dict(policy_in=str(tmp_path)), "policy_in: .* is a directory"),
        (dict(policy_in=5), "policy_in: must be a path"),
        (dict(policy_in=str(tuned), draft_vocab=51), "draft_vocab: .* ranks 50 tokens"),
        (dict(policy_in=str(tmp_path / "skip.json")), r"skip.json: tuned\.skip_layers\[1\]: .*\[0, 6\)"),
        (dict(policy_in=str(tmp_path / "vocab.json")), r"vocab.json: tuned\.draft_vocab\[1\]: .*token id"),
        (dict(policy_out=str(tmp_path / "missing" / "p.json")), "policy_out: must be a file path"),
        (dict(policy_out=str(tmp_path)), "policy_out: must be a file path"),
        (dict(translator=str(tmp_path / "none.safetensors")), "translator: .* is not a file"),
        (dict(translator=str(tmp_path / "lens.safetensors")), "translator: .* not a safetensors file"),
        (
            dict(translator=str(tmp_path / "wide.safetensors")),
            f"translator: .*wide.safetensors: .*hidden size {H + 1}",
        ),
        (
            dict(translator=str(tmp_path / "missing.safetensors")),
            "translator: .* tensors do not match .*missing",
        ),
        (dict(translator=str(tmp_path / "meta.safetensors")), "translator: .* metadata .* integers"),
    ]
    for kw, words in cases:
        streamer = Recorder()
        with pytest.raises(ValueError, match=words):
            eedecode.generate(model, ids(), max_new_tokens=5, streamer=streamer, **kw)
        assert streamer.calls == [], kw
    out = eedecode.generate(model, ids(), max_new_tokens=5, translator=str(tmp_path / "good.safetensors"))
    assert out.shape == (1, ids().shape[1] + 5)


def test_a_translator_drafts_at_its_own_layers_and_stays_lossless(tmp_path, monkeypatch):
    from eedecode.model.translator import TunedLens

    model = cached_tiny_model("llama", eos_token_id=None)
    H, L = model.config.hidden_size, model.config.num_hidden_layers
    lens = TunedLens(H, L, [2, 3])
    with torch.no_grad():
        for p in lens.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    path = lens.save(tmp_path / "lens.safetensors")
    translated = []
    real = DraftHead.translate
    monkeypatch.setattr(
        DraftHead, "translate", lambda self, h: translated.append(self.depth) or real(self, h)
    )
    monkeypatch.setattr(planner, "PAYS", 0.0)  # a tiny random model's layers never pay: offer them
    x = repetitive(2)
    ref = model.generate(x, max_new_tokens=NEW, do_sample=False, pad_token_id=0)
    out = eedecode.generate(model, x, max_new_tokens=NEW, translator=str(path), return_dict_in_generate=True)
    assert torch.equal(out.sequences, ref)
    exits = {k.split(":")[1] for k in out.stats.details["arms"] if k.startswith(("exit", "mixed"))}
    assert exits and exits <= {"E=2", "E=3", "lookup+E=2", "lookup+E=3"}  # at the translated layers
    assert out.stats.drafted_tokens > 0 and translated and set(translated) <= {2, 3}
    with pytest.raises(ValueError, match="exit_layer: .* has no translator for layer 1"):
        eedecode.generate(model, x, max_new_tokens=3, mode="adaptive", exit_layer=1, translator=str(path))


def test_the_adaptive_modes_own_settings_pick_it_and_a_rewritten_policy_file_is_read_again(tmp_path):
    model = cached_tiny_model("llama", eos_token_id=None)
    x = repetitive(2)
    out = eedecode.generate(
        model, x, max_new_tokens=5, exit_layer=2, lookup=False, return_dict_in_generate=True
    )
    assert out.stats.mode == "adaptive"  # lookup= is the adaptive mode's, so exit_layer=2 is its too
    with pytest.raises(ValueError, match="lookup, exit_drafts: both False"):
        eedecode.generate(model, x, max_new_tokens=5, lookup=False, exit_drafts=False)
    path = tmp_path / "p.json"
    tuned_file(path, range(10))
    eedecode.generate(model, x, max_new_tokens=5, policy_in=str(path))
    with pytest.raises(ValueError, match="ranks 10 tokens"):
        eedecode.generate(model, x, max_new_tokens=5, policy_in=str(path), draft_vocab=20)
    tuned_file(path, range(30))  # tuned again, same path
    eedecode.generate(model, x, max_new_tokens=5, policy_in=str(path), draft_vocab=20)
    assert any(len(p.tuned.draft_vocab) == 30 for p in policies(model).values())
    tuned_file(path, [])
    with pytest.raises(ValueError, match="draft_vocab: .* has no token ranking"):
        eedecode.generate(model, x, max_new_tokens=5, policy_in=str(path), draft_vocab=5)


def test_static_settings_pick_the_static_mode():
    model = cached_tiny_model("llama", eos_token_id=None)
    out = eedecode.generate(
        model, ids(), exit_layer=2, num_speculations=3, max_new_tokens=10, return_dict_in_generate=True
    )
    assert out.stats.mode == "self_speculative"
    out = eedecode.generate(model, ids(), exit_layer="auto", max_new_tokens=10, return_dict_in_generate=True)
    assert out.stats.mode == "adaptive"


def test_exit_layer_candidates():
    assert exit_layer_candidates(8) == [1, 2, 3, 4]
    assert exit_layer_candidates(30) == [1, 4, 8, 11, 15]
    assert exit_layer_candidates(2) == [1]


def test_the_prompt_probe_is_the_prefill_plus_each_layers_agreement():
    """The probed prefill leaves the cache and the last state as the plain prefill does, and its
    agreement is the exit head's top-1 against the model's on every real position of the window."""
    from eedecode.engine.chooser import TokenChooser
    from eedecode.engine.state import DecodingState
    from eedecode.model.runner import ModelRunner

    model = cached_tiny_model("llama", eos_token_id=None)
    runner = ModelRunner(model)
    x = ids(2, 12, seed=3)
    mask = torch.ones_like(x)
    mask[1, :3] = 0  # left padding in row 1
    plain = runner.new_cache(2, 20)
    plain.set_padding(mask)
    state = DecodingState(runner, TokenChooser(), x, max_new_tokens=4)
    state.cache.set_padding(mask)
    last = runner.prefill(x, plain)
    got, probes, real = probe.probed_prefill(state, x, [1, 3])
    torch.testing.assert_close(got, last)
    for i in range(runner.num_layers):
        torch.testing.assert_close(state.cache.keys[i][..., :12, :], plain.keys[i][..., :12, :])
    W = min(12, probe.WINDOW)
    assert real.tolist() == [[True] * W, [False] * 3 + [True] * (W - 3)]
    with torch.no_grad():  # the same test, by hand, through the model's own modules
        out = model(x, attention_mask=mask, output_hidden_states=True)
        final = out.logits[:, -W:].argmax(-1)
        for E in (1, 3):
            h = out.hidden_states[E][:, -W:]
            top = model.lm_head(model.model.norm(h)).float().softmax(-1).max(-1)
            confidence, agreed = probes[E]
            assert torch.equal(agreed[real], (top.indices == final)[real])
            torch.testing.assert_close(confidence[real], top.values[real], atol=1e-4, rtol=1e-4)


def test_only_the_best_predicted_exit_layer_is_offered_and_only_if_it_pays(monkeypatch):
    """The plan offers the exit layer with the best speed-up predicted from the probe alone when
    that reaches the bar, and none below it: then the call decodes with plain and lookup rounds
    only. The layer in use is judged on the probe too, not on its own rounds: what its rounds
    measure changes its draft length, never whether it is offered."""
    model = cached_tiny_model("llama", eos_token_id=None, num_hidden_layers=6)
    memory_of(model).reset()
    plans = []
    real_plan = planner.Planner.plan

    def spy(self, batch_size):
        real_plan(self, batch_size)
        plans.append((set(self.paying), dict(self.speedups), self))

    monkeypatch.setattr(planner.Planner, "plan", spy)
    monkeypatch.setattr(planner, "PAYS", 0.0)
    # verification costs fixed (measured ones are timing noise on a tiny model): T tokens cost
    # 1 + 0.05 (T - 1) steps
    fixed = lambda runner, batch, n, reps=2: [1 + 0.05 * (T - 1) for T in range(1, n + 1)]  # noqa: E731
    monkeypatch.setattr(planner, "linear_block_costs", fixed)
    out = eedecode.generate(model, repetitive(1), max_new_tokens=NEW, return_dict_in_generate=True)
    paying, speedups, plan = plans[-1]
    assert set(speedups) == {f"exit:E={E}" for E in exit_layer_candidates(6)}
    assert paying == {max(speedups, key=speedups.get)}
    used = {key for key in out.stats.details["arms"] if key.startswith("exit")}
    assert used and all(key.startswith(f"{next(iter(paying))}:") for key in used)
    # the offered layer's rounds say its drafts are never accepted: it stays offered (the bandit
    # judges it), while its draft length follows its rounds
    offered = next(iter(paying))
    plan.runs(offered).judged.add_(1e6)
    plan.policy.times.clear()  # the cost table on both sides: no timing noise in the comparison
    plan.plan(1)
    assert plan.paying == {offered} and plan.speedups == speedups
    assert plan.predicted[offered] < min(speedups.values())
    monkeypatch.setattr(planner, "PAYS", max(speedups.values()) + 1.0)  # nothing reaches it
    out = eedecode.generate(model, repetitive(1), max_new_tokens=NEW, return_dict_in_generate=True)
    assert plans[-1][0] == set()
    assert not any(key.startswith(("exit", "mixed")) for key in out.stats.details["arms"])


def test_each_batch_size_bucket_keeps_its_own_estimates(tmp_path):
    model = cached_tiny_model("llama", eos_token_id=None, num_hidden_layers=5)
    memory_of(model).reset()
    path = tmp_path / "p.json"
    eedecode.generate(model, repetitive(1), max_new_tokens=NEW, policy_out=str(path))
    one = {s: v.rounds for s, v in policy_file.load(path).bandit.estimates.items() if v.rounds > 0}
    assert one and all(s.bucket == 1 for s in one)
    eedecode.generate(model, repetitive(3), max_new_tokens=NEW, policy_out=str(path))
    saved = policy_file.load(path)
    both = {s: v.rounds for s, v in saved.bandit.estimates.items() if v.rounds > 0}
    assert any(s.bucket == 2 for s in both)  # batch 3 counts in the bucket of 2..3 rows
    assert {s: v for s, v in both.items() if s.bucket == 1} == one  # batch 1's estimates untouched
    assert saved.times[2].plain and saved.times[1].plain
    assert saved.probed and saved.saved_drafters and saved.saved_probe_runs  # the probe, the length model
    assert (bucket_of(1), bucket_of(5), bucket_of(16)) == (1, 4, 16)


def test_rounds_with_and_without_a_lookup_match_keep_their_own_estimates(only_arms):
    """Whether the row found a lookup match is the round's context: the arms' estimates are kept
    per context, and lookup is played only in rounds with a match."""
    model = cached_tiny_model("llama", eos_token_id=None)
    memory_of(model).reset()
    only_arms(ARMS["none"], ARMS["lookup"])
    eedecode.generate(model, repetitive(1), max_new_tokens=NEW)
    eedecode.generate(model, ids(1, 9, seed=8), max_new_tokens=NEW)
    estimates = next(iter(policies(model).values())).bandit.estimates
    pulls = {(s.arm, s.matched): v.pulls for s, v in estimates.items() if v.pulls}
    assert pulls.get(("none", False), 0) > 0 and pulls.get(("lookup:k=6", True), 0) > 0
    assert ("lookup:k=6", False) not in pulls  # never played without a match
    assert set(pulls) <= {("none", False), ("none", True), ("lookup:k=6", True)}


def test_lookup_drafts_are_judged_in_every_round_with_a_match(only_arms, monkeypatch):
    """The lookup drafts' length model learns from rounds that played other arms: a lookup draft
    is judged against the tokens the round emitted (here every round is plain decoding, so the
    first draft of each match is judged, accepted when it equals the next token)."""
    from eedecode.drafting import run_lengths
    from eedecode.drafting.lookup import lookup_drafts

    monkeypatch.setattr(run_lengths, "DISCOUNT", 1.0)  # plain counts
    model = cached_tiny_model("llama", eos_token_id=None)
    memory_of(model).reset()
    only_arms(ARMS["none"], ARMS["lookup"])
    monkeypatch.setattr(Bandit, "choose", lambda self, available, priors=None: Arm("none"))
    x = repetitive(1)
    seq = eedecode.generate(model, x, max_new_tokens=NEW)[0]
    runs = next(iter(policies(model).values())).drafters["lookup"].runs
    runs.flush()
    judged = accepted = 0
    P = x.shape[1]  # round i emits seq[P + i] (the prefill emits seq[P]); the last drafts nothing
    for end in range(P + 1, P + NEW - 1):
        drafts, counts = lookup_drafts(seq[None, :end], torch.tensor([0]), torch.tensor([end]), 6)
        if counts[0] > 0:
            judged += 1
            accepted += int(drafts[0, 0] == seq[end])
    assert judged > 0
    assert runs.judged.tolist()[:2] == [judged, 0] and runs.accepted.tolist()[0] == accepted


def test_saving_keeps_what_the_file_learned_for_drafters_not_used(tmp_path):
    model = cached_tiny_model("llama", eos_token_id=None, num_hidden_layers=5)
    memory_of(model).reset()
    path = tmp_path / "p.json"
    eedecode.generate(model, repetitive(1), max_new_tokens=NEW, policy_out=str(path))
    before = policy_file.load(path)
    assert before.saved_drafters and before.saved_probe_runs
    memory_of(model).reset()  # a new process: starts from the file
    eedecode.generate(model, repetitive(1), max_new_tokens=1, policy_in=str(path), policy_out=str(path))
    after = policy_file.load(path)
    assert set(after.saved_drafters) >= set(before.saved_drafters)
    assert set(after.saved_probe_runs) >= set(before.saved_probe_runs)


def test_in_a_batch_lookup_is_offered_where_the_laggards_found_a_match(only_arms, monkeypatch):
    """A batch waits for its laggards (the running rows furthest behind): lookup rounds, which give
    rows without a match one token, are offered only when every laggard found a match. The
    laggards are computed here from the decoder's own output lengths."""
    model = cached_tiny_model("llama", eos_token_id=None)
    memory_of(model).reset()
    only_arms(ARMS["none"], ARMS["lookup"])
    seen, real_look, real_choose = [], LookupDrafter.look, Bandit.choose

    def look(self, state, *a, **kw):
        found = real_look(self, state, *a, **kw)
        counts = self.found[1]  # the host index's (drafts, counts) on a CPU
        active, out_len = state.active.tolist(), state.out_len.tolist()
        least = min(n for n, on in zip(out_len, active, strict=True) if on)
        laggards = [b for b, (n, on) in enumerate(zip(out_len, active, strict=True)) if on and n == least]
        matched = [c > 0 and on for c, on in zip(counts, active, strict=True)]
        seen.append({"matched": matched, "laggards": laggards})
        return found

    def choose(self, available, priors=None):
        if seen and "offered" not in seen[-1]:
            seen[-1].update(offered=any(a.kind == "lookup" for a in available), context=self.matched)
        return real_choose(self, available, priors)

    monkeypatch.setattr(LookupDrafter, "look", look)
    monkeypatch.setattr(Bandit, "choose", choose)
    x = torch.cat([repetitive(1), ids(1, 15, seed=9)])  # row 0 repeats itself, row 1 hardly
    out = eedecode.generate(model, x, max_new_tokens=NEW, return_dict_in_generate=True)
    assert torch.equal(out.sequences, model.generate(x, max_new_tokens=NEW, do_sample=False, pad_token_id=0))
    for r in seen:
        behind = all(r["matched"][b] for b in r["laggards"])
        assert r["offered"] == behind
        assert r["context"] == behind
    assert any(r["offered"] for r in seen)
    assert any(any(r["matched"]) and not r["offered"] for r in seen)  # a row matched, not a laggard


def test_without_the_lookup_arm_nothing_is_looked_up(monkeypatch):
    model = cached_tiny_model("llama", eos_token_id=None)
    monkeypatch.setattr(planner, "PAYS", 0.0)
    memory_of(model).reset()
    monkeypatch.setattr(LookupDrafter, "look", lambda *a, **kw: pytest.fail("looked up"))
    out = eedecode.generate(
        model, repetitive(2), max_new_tokens=NEW, lookup=False, return_dict_in_generate=True
    )
    assert any(k.startswith("exit") for k in out.stats.details["arms"])
