"""Early-exit decoding: exact where it must be (no exit: plain decoding; "recompute": the full
model's KV), the copied KV is what CALM defines, each criterion exits where a hand-made model says
it must, and the self-speculative KV choices agree. Tiny random models only."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHS, cached_tiny_model, tiny_model
from test_batch import padded_batch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

import eedecode
from eedecode.engine.chooser import TokenChooser
from eedecode.engine.decoder import Decoder
from eedecode.model.exit_criteria import MaxProb
from eedecode.model.runner import ModelRunner
from eedecode.modes.early_exit import EarlyExit, EarlyExitOptions

KV = ("copy", "recompute")
NEVER = ("max-prob:1.0", "entropy:0", "margin:1.0", "patience:100", "cosine:1.0")


def model_without_eos(arch="llama"):
    return cached_tiny_model(arch, eos_token_id=None, bos_token_id=None)


def prompt(batch, length, seed):
    return torch.randint(3, 97, (batch, length), generator=torch.Generator().manual_seed(seed))


def by_content(point):
    """Fires on a mix of depths, decided by each row's own state (so a row decides alone as in a batch)."""
    return (point.stats.argmax + point.layer) % 3 == 0


def decode(model, ids, mask=None, max_new=24, **options):
    """Greedy early exit through the Decoder, keeping the mode and cache for inspection."""
    runner = ModelRunner(model)
    mode = EarlyExit(EarlyExitOptions(**options), runner)
    decoder = Decoder(runner, TokenChooser(), mode, ids, max_new)
    with torch.no_grad():
        view = decoder.prefill(ids, mask)
        while view.running:
            view = decoder.step(view.max_remaining)
    return decoder, mode


# -- no exit: plain decoding -----------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kv", KV)
def test_a_criterion_that_never_fires_is_plain_greedy_decoding(arch, kv):
    model = model_without_eos(arch)
    ids = prompt(1, 9, seed=1)
    ar = eedecode.generate(model, ids, mode="autoregressive", max_new_tokens=30)
    for criterion in NEVER:
        out = eedecode.generate(
            model, ids, mode="early_exit", criterion=criterion, kv_strategy=kv, max_new_tokens=30
        )
        assert torch.equal(out, ar), criterion
    ids, mask = padded_batch([5, 13, 1, 8], seed=2)
    ar = eedecode.generate(model, ids, attention_mask=mask, mode="autoregressive", max_new_tokens=20)
    out = eedecode.generate(
        model,
        ids,
        attention_mask=mask,
        mode="early_exit",
        criterion="max-prob:1.0",
        kv_strategy=kv,
        max_new_tokens=20,
    )
    assert torch.equal(out, ar)


@pytest.mark.parametrize("kv", KV)
def test_a_criterion_that_never_fires_samples_as_plain_decoding(kv):
    model = model_without_eos()
    ids = prompt(3, 6, seed=3)
    kw = dict(do_sample=True, temperature=0.9, top_k=20, seed=5, max_new_tokens=20)
    ar = eedecode.generate(model, ids, mode="autoregressive", **kw)
    out = eedecode.generate(model, ids, mode="early_exit", criterion="margin:1.0", kv_strategy=kv, **kw)
    assert torch.equal(out, ar)


# -- the two KV strategies -------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("batch", [False, True])
def test_recompute_leaves_every_layer_with_the_full_models_kv(arch, batch):
    model = model_without_eos(arch)
    ids, mask = padded_batch([7, 2, 11], seed=4) if batch else (prompt(1, 7, seed=4), None)
    decoder, mode = decode(model, ids, mask, max_new=30, criterion=by_content, kv_strategy="recompute")
    hist = mode.report()["exit_layer_histogram"]
    L = len(hist) - 1
    assert hist[L] > 0 and sum(c > 0 for c in hist[:L]) >= 2, hist  # deep tokens and several exit depths
    own_layers = sum(d * c for d, c in enumerate(hist)) / ids.shape[0]
    assert mode.kv.layer_tokens > own_layers  # deferred layers ran, batched with deeper tokens
    mode.flush()
    cache = decoder.state.cache
    seq = decoder.output(ids, None)[:, :-1]  # the newest token is pending: not in the cache
    S = seq.shape[1]
    assert (cache.lengths == S).all()
    runner = ModelRunner(model)
    full = runner.new_cache(ids.shape[0], S)
    if mask is not None:
        full.set_padding(torch.cat([mask, torch.ones_like(seq[:, ids.shape[1] :])], 1))
    with torch.no_grad():
        runner.prefill(seq, full)
    valid = (full.key_valid if full.key_valid is not None else torch.ones_like(seq, dtype=torch.bool))[:, :S]
    for layer in range(L):
        for ours, ref in ((cache.keys, full.keys), (cache.values, full.values)):
            a, b = ours[layer][:, :, :S].transpose(1, 2)[valid], ref[layer][:, :, :S].transpose(1, 2)[valid]
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=f"layer {layer}")


def test_recompute_tokens_are_the_full_models_states_through_the_exit_head():
    """With exact KV, every exit decision is taken on the full model's (teacher-forced) states."""
    model = model_without_eos("llama")
    ids = prompt(1, 6, seed=5)
    out = eedecode.generate(
        model, ids, mode="early_exit", criterion=by_content, kv_strategy="recompute", max_new_tokens=25
    )
    runner = ModelRunner(model)
    with torch.no_grad():
        h = runner.embed(out[:, :-1])
        expected = None
        for layer in range(runner.num_layers):
            h = runner.run_layers(h, layer, layer + 1)
            if layer + 1 < runner.num_layers:
                top1 = runner.exit_head(h, stats={"argmax"}).argmax[0]
                fires = (top1 + layer + 1) % 3 == 0
                expected = torch.where(fires, top1, -1) if expected is None else expected
                expected = torch.where((expected < 0) & fires, top1, expected)
        expected = torch.where(expected < 0, runner.logits(h)[0].argmax(-1), expected)
    assert out[0, 6:].tolist() == expected[5:].tolist()


def copied_kv(model, layer: int, hidden: torch.Tensor, position: int):
    """The layer's own input norm and k/v projections, and HF's RoPE for the key, on ``hidden`` [H]."""
    block, cfg = model.model.layers[layer], model.config
    D = cfg.hidden_size // cfg.num_attention_heads
    x = block.input_layernorm(hidden[None, None])
    k = block.self_attn.k_proj(x).view(1, 1, -1, D).transpose(1, 2)
    v = block.self_attn.v_proj(x).view(1, 1, -1, D).transpose(1, 2)
    cos, sin = model.model.rotary_emb(x, torch.tensor([[position]]))
    k, _ = apply_rotary_pos_emb(k, k, cos, sin)
    return k[0, :, 0], v[0, :, 0]  # [Hkv, D]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_copy_writes_the_exit_state_through_each_skipped_layers_projections(arch):
    """Round 4 exits at depth 2 in row 0 and depth 4 in row 1 (the batch runs on to depth 4 with
    row 0 frozen); every other round goes to full depth."""
    model = model_without_eos(arch)
    L, P = model.config.num_hidden_layers, 5
    seen, rounds = {}, []

    def criterion(point):
        if point.layer == 1:
            rounds.append(len(rounds))
        if rounds[-1] != 4:
            return torch.zeros(2, dtype=torch.bool)
        fire = torch.tensor([point.layer == 2, point.layer == 4])
        for row in fire.nonzero()[:, 0].tolist():
            seen[row] = (point.layer, point.hidden[row].clone())
        return fire

    ids = prompt(2, P, seed=6)
    decoder, _ = decode(model, ids, max_new=8, criterion=criterion, kv_strategy="copy")
    position = P + 4  # round r writes the token at position P + r
    for row, (depth, hidden) in seen.items():
        for layer in range(L):
            k, v = (
                decoder.state.cache.keys[layer][row, :, position],
                decoder.state.cache.values[layer][row, :, position],
            )
            ref_k, ref_v = copied_kv(model, layer, hidden, position)
            copied = torch.allclose(k, ref_k, atol=1e-5) and torch.allclose(v, ref_v, atol=1e-5)
            assert copied == (layer >= depth), (row, layer, depth)


def test_write_kv_equals_what_running_the_layer_writes():
    model = model_without_eos("qwen2")
    runner = ModelRunner(model)
    ids = prompt(2, 6, seed=7)
    a, b = runner.new_cache(2, 8), runner.new_cache(2, 8)
    with torch.no_grad():
        h = runner.run_layers(runner.embed(ids), 0, 3, a)
        runner.run_layers(runner.embed(ids), 0, 3, b)
        runner.run_layers(h, 3, 4, a)
        runner.write_kv(h, 3, 4, b)
    assert torch.equal(a.lengths, b.lengths)
    torch.testing.assert_close(a.keys[3], b.keys[3])
    torch.testing.assert_close(a.values[3], b.values[3])


# -- criteria, on a model whose layers after the first add nothing -----------------------------------
@pytest.fixture(scope="module")
def inert_model():
    """Layers 1.. add nothing to the residual stream: every depth >= 1 holds the same state, so the
    top-1 is the full model's at every exit point and copied KV is the true KV."""
    model = tiny_model("llama", seed=3, eos_token_id=None, bos_token_id=None)
    with torch.no_grad():
        for block in model.model.layers[1:]:
            block.self_attn.o_proj.weight.zero_()
            block.mlp.down_proj.weight.zero_()
    return model


@pytest.mark.parametrize(
    "criterion, options, depth",
    [
        ("max-prob:0", {}, 1),
        ("margin:0", {}, 1),
        ("entropy:100", {}, 1),
        ("patience:2", {}, 3),  # top-1 unchanged at exit points 1, 2, 3
        ("cosine:0.999", {}, 2),  # depth 2 is the first whose state equals the one below it
        ("max-prob:0", dict(min_exit_layer=4), 4),
        ("max-prob:0", dict(exit_layers="5,3"), 3),
        ("patience:1", dict(exit_layers=[2, 5]), 5),
        (MaxProb(0.0), {}, 1),
        (lambda point: point.layer >= 2, {}, 2),
    ],
)
@pytest.mark.parametrize("kv", KV)
def test_each_criterion_exits_where_it_must(inert_model, criterion, options, depth, kv):
    ids = prompt(2, 5, seed=8)
    ar = eedecode.generate(inert_model, ids, mode="autoregressive", max_new_tokens=12)
    out = eedecode.generate(
        inert_model,
        ids,
        mode="early_exit",
        criterion=criterion,
        kv_strategy=kv,
        **options,
        max_new_tokens=12,
        return_dict_in_generate=True,
    )
    assert torch.equal(out.sequences, ar)
    hist = out.stats.details["exit_layer_histogram"]
    assert hist[depth] == sum(hist) == 2 * 11, hist
    assert out.stats.details["mean_exit_layer"] == depth


# -- batches and sampling --------------------------------------------------------------------------
@pytest.mark.parametrize("kv", KV)
def test_batch_rows_exit_at_their_own_depths_as_they_would_alone(kv):
    model = model_without_eos("mistral")
    lengths = [4, 12, 1, 7]
    ids, mask = padded_batch(lengths, seed=9)
    P = ids.shape[1]
    kw = dict(mode="early_exit", criterion=by_content, kv_strategy=kv, max_new_tokens=20)
    out = eedecode.generate(model, ids, attention_mask=mask, return_dict_in_generate=True, **kw)
    depths = torch.tensor(out.stats.details["exit_layers"])  # [B, tokens]
    assert (depths[:, 1:].min(0).values != depths[:, 1:].max(0).values).any()  # rows differed in a round
    for i, n in enumerate(lengths):
        alone = eedecode.generate(model, ids[i : i + 1, P - n :], **kw)
        assert torch.equal(alone[0, n:], out.sequences[i, P:]), i


def test_sampling_exits_and_is_reproducible():
    model = model_without_eos("qwen2")
    ids = prompt(4, 5, seed=10)
    kw = dict(mode="early_exit", criterion=by_content, do_sample=True, seed=3, max_new_tokens=16)
    a = eedecode.generate(model, ids, return_dict_in_generate=True, **kw)
    b = eedecode.generate(model, ids, return_dict_in_generate=True, **kw)
    assert torch.equal(a.sequences, b.sequences)
    assert 0 < a.stats.details["exit_rate"] < 1


def test_eos_stops_rows_and_they_no_longer_hold_the_batch_back():
    model = cached_tiny_model("llama", bos_token_id=None)
    ids = prompt(3, 5, seed=11)
    kw = dict(mode="early_exit", criterion=by_content, max_new_tokens=20)
    free = eedecode.generate(model, ids, **kw)
    eos = int(free[0, 5 + 3])
    out = eedecode.generate(model, ids, **kw, eos_token_id=eos, pad_token_id=0)
    for row, new in zip(out[:, 5:].tolist(), free[:, 5:].tolist(), strict=True):
        n = new.index(eos) + 1 if eos in new else len(new)  # each row ends at its own first EOS
        assert row[:n] == new[:n] and set(row[n:]) <= {0}


# -- self-speculative: the exit query cache or re-running the shallow layers -----------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_self_speculative_kv_choices_give_the_same_greedy_tokens(arch, monkeypatch):
    model = model_without_eos(arch)
    ids, mask = padded_batch([6, 1, 10], seed=12)
    ar = eedecode.generate(model, ids, attention_mask=mask, mode="autoregressive", max_new_tokens=25)
    calls = []
    original = ModelRunner.run_layers

    def counting(self, hidden, start, end, cache=None):
        calls.append((start, end, hidden.shape[1]))
        return original(self, hidden, start, end, cache)

    monkeypatch.setattr(ModelRunner, "run_layers", counting)
    for E, k in [(1, 3), (3, 2), (5, 6)]:
        for kv in ("exit_query", "rerun"):
            calls.clear()
            kw = dict(exit_layer=E, num_speculations=k, kv_strategy=kv, max_new_tokens=25)
            out = eedecode.generate(model, ids, attention_mask=mask, **kw)
            assert torch.equal(out, ar), (E, k, kv)
            L = model.config.num_hidden_layers
            after = calls[1:]  # after the prefill
            drafting = max(T for s, e, T in after if (s, e) == (0, E))
            full = max((T for s, e, T in after if (s, e) == (0, L)), default=0)
            deep = max((T for s, e, T in after if (s, e) == (E, L)), default=0)
            if kv == "rerun":  # every layer over the pending token and the drafts again
                assert (drafting, full, deep) == (1, k + 1, 0)
            else:  # layers < E never see a draft twice; [E, L) verifies over the exit states
                assert (drafting, full, deep) == (1, 0, k + 1)


# -- settings: errors, the command line ----------------------------------------------------------------
@pytest.mark.parametrize(
    "settings, words",
    [
        (dict(criterion="speed:3"), "criterion: unknown name 'speed'"),
        (dict(criterion="max-prob"), "criterion: expected NAME:THRESHOLD"),
        (dict(criterion="max-prob:1.5"), r"criterion max-prob: threshold must be a number in \[0.0, 1.0\]"),
        (dict(criterion="patience:0"), "criterion patience: threshold must be an int"),
        (dict(criterion=3), "criterion: expected NAME:THRESHOLD"),
        (dict(min_exit_layer=0), "min_exit_layer: must be an int in 1..5"),
        (dict(min_exit_layer=6), "min_exit_layer: must be an int in 1..5"),
        (dict(exit_layers=[2, 6]), "exit_layers: must be distinct ints in 1..5"),
        (dict(exit_layers="2,x"), "exit_layers: expected comma-separated ints"),
        (dict(exit_layers=[]), "exit_layers: must be one or more ints"),
        (dict(exit_layers=[2], min_exit_layer=2), "exit_layers: give exit_layers or min_exit_layer"),
        (dict(kv_strategy="rerun"), "kv_strategy: must be one of"),
        (dict(exit_layer=2), "exit_layer: not a setting of mode='early_exit'"),
    ],
)
def test_bad_early_exit_settings_are_clear_errors(settings, words):
    with pytest.raises(ValueError, match=words):
        eedecode.generate(model_without_eos(), prompt(1, 3, 0), mode="early_exit", **settings)


def test_bad_self_speculative_kv_strategy_is_a_clear_error():
    with pytest.raises(
        ValueError, match=r"kv_strategy: must be one of \('exit_query', 'rerun'\).*early_exit"
    ):
        eedecode.generate(model_without_eos(), prompt(1, 3, 0), exit_layer=2, kv_strategy="copy")
    out = eedecode.generate(model_without_eos(), prompt(1, 3, 0), mode="early-exit", max_new_tokens=3)
    assert out.shape == (1, 6)  # the command line's spelling of a mode works in Python too


def test_a_criterion_of_the_wrong_shape_is_a_clear_error():
    with pytest.raises(ValueError, match="criterion: must return one bool per row"):
        eedecode.generate(
            model_without_eos(), prompt(2, 3, 0), mode="early_exit", criterion=lambda p: torch.ones(3) > 0
        )


def test_command_line_flags_reach_the_mode(capsys):
    from eedecode.cli.arguments import decoding_kwargs
    from eedecode.cli.main import build_parser, main

    argv = ["generate", "--mode", "early-exit", "--criterion", "max-prob:0.9", "--kv-strategy", "copy"]
    args = build_parser().parse_args([*argv, "--exit-layers", "2,4", "x"])
    kw = decoding_kwargs(args, {})
    assert kw["mode"] == "early_exit" and kw["criterion"] == "max-prob:0.9" and kw["kv_strategy"] == "copy"
    assert kw["exit_layers"] == "2,4"
    assert main([*argv, "--model", "demo", "--max-new-tokens", "6", "--no-stream", "def f():\\n"]) == 0
    err = capsys.readouterr().err
    assert "early exit max-prob:0.9 at 1..7, kv=copy" in err and "mean exit layer" in err
