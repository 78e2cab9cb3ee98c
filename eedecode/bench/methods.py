"""The benchmark's methods, by name, in one table built from the mode registry.

Hugging Face baselines: ``hf`` (plain ``generate`` on the model as given), ``hf_packed`` (the
same on a copy of the model with its weights packed in place, as eedecode's hot path reads them),
``hf_early_exit`` (assisted decoding with ``assistant_early_exit``, LayerSkip's drafter) and
``hf_prompt_lookup`` (assisted decoding with ``prompt_lookup_num_tokens``, n-gram drafts from the
prompt); and ``eedecode_<short>`` for every mode registered in :mod:`eedecode.modes`, so a newly
registered mode is measured without a change here. Every method decodes greedily; HF's assisted
decoding runs batch size 1 only.

A mode with other settings than its defaults is a *variant*, named
``eedecode_<short>@NAME=VALUE[@NAME=VALUE...]`` after its ``Options`` fields, e.g.
``eedecode_ss@kv_strategy=rerun`` or ``eedecode_ee@criterion=max-prob:0.8@kv_strategy=copy``, so
that settings can be compared with each other in one interleaved run. ``eedecode_oracle``, the
bound every drafting policy is read against, runs only when named, and so do ``llamacpp_f32`` and
``llamacpp_f16``: llama.cpp on the same weights written as GGUF (:mod:`eedecode.bench.llamacpp`,
an optional extra; skipped with a message when it is not installed). What a method is:
:mod:`eedecode.bench.method`.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

from ..api.generation import generate
from ..engine.mode import setting_type
from ..modes import build_options, get_mode, mode_names, option_fields
from .llamacpp import LlamaCpp
from .method import Method, Speculation

HF = "hf"  # the baseline of "vs HF generate" and "identical to HF"
AR = "eedecode_ar"  # the baseline of the ideal speed-up and the efficiency
#: Speculation's fields by the name of the mode option they set.
SPEC_OPTIONS = {
    "exit_layer": "exit_layer",
    "num_speculations": "num_speculations",
    "draft_confidence_threshold": "confidence_threshold",
}


class HFGenerate(Method):
    name, display = HF, "HF generate"

    def run(self, model, ids, mask, max_new_tokens, spec, streamer=None):
        extra = self.hf_arguments(spec)
        common = dict(attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, streamer=streamer)
        return model.generate(ids, **common, pad_token_id=pad_token_id(model), **extra), None

    def hf_arguments(self, spec: Speculation) -> dict:
        return {}


class HFGeneratePacked(HFGenerate):
    """HF generate on a copy packed in place: the share of the speed-up the layout alone gives."""

    name, display = "hf_packed", "HF generate (packed weights)"
    packed_in_place = True


class HFEarlyExit(HFGenerate):
    """HF assisted decoding with ``assistant_early_exit``, at the benchmark's settings or, as a
    variant (``hf_early_exit@exit_layer=3@num_speculations=2``), at its own."""

    name, display = "hf_early_exit", "HF assistant_early_exit"
    batch_one_only = True

    def __init__(self, fixed: dict | None = None):
        self.fixed = dict(fixed or {})
        if self.fixed:
            suffix = "".join(f"@{k}={v}" for k, v in self.fixed.items())
            self.name, self.display = self.name + suffix, f"{self.display} [{suffix[1:]}]"

    def _spec(self, spec: Speculation) -> Speculation:
        names = {opt: attr for opt, attr in SPEC_OPTIONS.items() if opt in self.fixed}
        return replace(spec, **{attr: self.fixed[opt] for opt, attr in names.items()})

    def settings(self, spec):
        spec = self._spec(spec)
        values = {
            "exit_layer": spec.exit_layer,
            "num_speculations": spec.num_speculations,
            "draft_confidence_threshold": spec.confidence_threshold,
        }
        return {k: v for k, v in values.items() if v is not None}

    def validate(self, spec, num_layers):
        self._spec(spec).validate(num_layers)

    def hf_arguments(self, spec):
        spec = self._spec(spec)
        extra = {}
        if spec.confidence_threshold is not None:
            extra["assistant_confidence_threshold"] = spec.confidence_threshold
        return dict(
            extra,
            assistant_early_exit=spec.exit_layer,
            num_assistant_tokens=spec.num_speculations,
            num_assistant_tokens_schedule="constant",
        )


class HFPromptLookup(HFGenerate):
    name, display = "hf_prompt_lookup", "HF prompt lookup"
    batch_one_only = True  # HF: "assisted generate is only supported for batch_size = 1"

    def settings(self, spec):
        return {"prompt_lookup_num_tokens": spec.prompt_lookup_num_tokens}

    def validate(self, spec, num_layers):
        spec.validate(num_layers)

    def hf_arguments(self, spec):
        return {"prompt_lookup_num_tokens": spec.prompt_lookup_num_tokens}


class OracleBound(Method):
    """The oracle bound (:mod:`eedecode.bench.oracle`): drafts from an exit layer of exactly the
    tokens that will be accepted. What it knows (plain decoding's continuation of the batch and
    the exit layer's teacher-forced top-1 along it) is computed in :meth:`prepare`, outside the
    timed call. Not in the default methods."""

    name, display = "eedecode_oracle", "oracle bound (eedecode)"
    in_default = False
    fields = ("exit_layer", "max_drafts")

    def __init__(self, fixed: dict | None = None):
        self._known: dict = {}
        self.fixed = dict(fixed or {})
        if self.fixed:
            suffix = "".join(f"@{k}={v}" for k, v in self.fixed.items())
            self.name, self.display = self.name + suffix, f"{self.display} [{suffix[1:]}]"

    def settings(self, spec):
        return {"exit_layer": spec.exit_layer, "max_drafts": 8, **self.fixed}

    def validate(self, spec, num_layers):
        E, k = self.settings(spec)["exit_layer"], self.settings(spec)["max_drafts"]
        replace(spec, exit_layer=E, num_speculations=k).validate(num_layers)

    def prepare(self, model, ids, mask, max_new_tokens, spec):
        from .oracle import accepted_runs

        E = self.settings(spec)["exit_layer"]
        key = (ids.cpu().numpy().tobytes(), tuple(ids.shape), max_new_tokens, E)
        if key not in self._known:
            common = dict(attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False)
            reference = generate(model, ids, **common, mode="autoregressive")[:, ids.shape[1] :]
            self._known[key] = accepted_runs(model, ids, mask, reference, E)
        self._runs = self._known[key]

    def run(self, model, ids, mask, max_new_tokens, spec, streamer=None):
        from .oracle import oracle_registered

        common = dict(attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, streamer=streamer)
        settings = dict(self.settings(spec), runs=self._runs)
        with oracle_registered() as oracle:
            out = generate(model, ids, **common, mode=oracle.name, return_dict_in_generate=True, **settings)
        return out.sequences, out.stats


class Eedecode(Method):
    """A registered eedecode mode, given the speculation settings its ``Options`` have and, for a
    variant, its own ``fixed`` settings."""

    def __init__(self, mode: str, fixed: dict | None = None):
        cls = get_mode(mode)
        self.mode, self.fixed, self.lossless = mode, dict(fixed or {}), cls.lossless
        suffix = "".join(f"@{k}={v}" for k, v in self.fixed.items())
        self.name = f"eedecode_{cls.short}{suffix}"
        self.display = f"eedecode {mode.replace('_', '-')}" + (f" [{suffix[1:]}]" if suffix else "")

    def settings(self, spec):
        cls = get_mode(self.mode)
        own = option_fields(cls) if cls.benchmark_settings is None else cls.benchmark_settings
        values = {opt: getattr(spec, attr) for opt, attr in SPEC_OPTIONS.items() if opt in own}
        return {**{k: v for k, v in values.items() if v is not None}, **self.fixed}

    def validate(self, spec, num_layers, device=None):
        options = build_options(get_mode(self.mode), self.settings(spec))
        options.validate(num_layers)
        if device is not None and hasattr(options, "validate_device"):
            options.validate_device(device)

    def run(self, model, ids, mask, max_new_tokens, spec, streamer=None):
        common = dict(attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, streamer=streamer)
        settings = self.settings(spec)
        out = generate(model, ids, **common, mode=self.mode, return_dict_in_generate=True, **settings)
        return out.sequences, out.stats


def variant(name: str, what: str = "methods") -> Method:
    """``eedecode_<short>@NAME=VALUE...`` -> that mode with those settings (typed as its flags are);
    ``hf_early_exit@...`` (exit_layer, num_speculations, draft_confidence_threshold) and
    ``eedecode_oracle@...`` (exit_layer, max_drafts) likewise."""
    base, *pairs = name.split("@")
    modes = {f"eedecode_{get_mode(m).short}": m for m in mode_names()}
    others = {
        HFEarlyExit.name: (HFEarlyExit, tuple(SPEC_OPTIONS)),
        OracleBound.name: (OracleBound, OracleBound.fields),
    }
    if base not in modes and base not in others or not pairs:
        raise ValueError(
            f"{what}: unknown {name!r}; a variant is eedecode_<short>@NAME=VALUE[@...], "
            "hf_early_exit@NAME=VALUE or eedecode_oracle@NAME=VALUE"
        )
    fields = others[base][1] if base in others else option_fields(get_mode(modes[base]))
    fixed = {}
    for pair in pairs:
        key, eq, text = pair.partition("=")
        if not eq or key not in fields:
            raise ValueError(f"{what}: {name!r}: {pair!r} is not NAME=VALUE with NAME in {', '.join(fields)}")
        try:
            fixed[key] = setting_type(key)(text)
        except ValueError:
            raise ValueError(f"{what}: {name!r}: {key} cannot be {text!r}") from None
    return others[base][0](fixed) if base in others else Eedecode(modes[base], fixed)


def available_methods() -> dict[str, Method]:
    """Every method by name, in the default order; read from the mode registry on each call."""
    modes = sorted(mode_names(), key=lambda m: (m != "autoregressive", m))  # the baseline first
    methods = [
        HFGenerate(),
        HFGeneratePacked(),
        HFEarlyExit(),
        HFPromptLookup(),
        *(Eedecode(m) for m in modes),
        OracleBound(),
        LlamaCpp("F32"),
        LlamaCpp("F16"),
    ]
    return {m.name: m for m in methods}


def method_names(everything: bool = False) -> tuple[str, ...]:
    """The methods measured when none are named (``everything``: also the opt-in ones)."""
    return tuple(name for name, m in available_methods().items() if everything or m.in_default)


def resolve_methods(names, what: str = "methods") -> list[Method]:
    """Methods by name (a :class:`Method` passes through as it is); an unknown or repeated name, or
    none, is a ValueError naming ``what``."""
    table = available_methods()
    given = list(names)
    names = [n.name if isinstance(n, Method) else n for n in given]
    unknown = [n for n in names if n not in table and "@" not in n]
    if unknown:
        raise ValueError(f"{what}: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(table)}")
    if not names or len(set(names)) != len(names):
        raise ValueError(f"{what}: need one or more distinct methods, got {names}")
    return [g if isinstance(g, Method) else table[g] if g in table else variant(g, what) for g in given]


def skipped_methods(names) -> dict[str, str]:
    """The named methods that cannot run here, with the reason (a missing optional package)."""
    return {m.name: why for m in resolve_methods(names) if (why := m.unavailable()) is not None}


def with_baselines(names) -> list:
    """``names`` with HF generate and eedecode autoregressive in front when they are missing: the
    baselines every speed-up is read against ("vs HF generate", "vs eedecode AR")."""
    names = list(names)
    given = {n.name if isinstance(n, Method) else n for n in names}
    return [b for b in (HF, AR) if b not in given] + names


def display_name(name: str) -> str:
    """A method's name in a table ("eedecode self-speculative"); the name itself if unknown."""
    method = available_methods().get(name)
    if method is None and "@" in name:
        with contextlib.suppress(ValueError):
            method = variant(name)
    return method.display if method else name


def pad_token_id(model) -> int | None:
    """The model's pad token, else its (first) EOS token, else None."""
    pad = model.generation_config.pad_token_id
    if pad is None:
        eos = model.generation_config.eos_token_id
        pad = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
    return pad
