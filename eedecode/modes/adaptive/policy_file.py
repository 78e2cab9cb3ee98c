"""Policy files: the adaptive mode's learned state as JSON (``policy_out=`` writes one,
``policy_in=`` and ``eedecode tune`` read and write them).

Reading checks every field against the model the file is used with, before anything is
generated: layer numbers in ``[0, L)``, token ids in the vocabulary, the types and shapes of every
statistic. A file that is not an eedecode policy, or does not fit the model, raises a ValueError
naming the argument, the file and the field.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .arms import KINDS, Arm
from .bandit import ArmStats, Bandit, Slot
from .store import Policy, StepTimes, Tuned

FORMAT = "eedecode-policy/2"


def fingerprint(config) -> str:
    """What a policy was learned on: the model's type and shape."""
    keys = ("model_type", "num_hidden_layers", "hidden_size", "vocab_size", "intermediate_size")
    return "-".join(str(getattr(config, key, "")) for key in keys)


# -- writing -----------------------------------------------------------------------------------
def to_json(policy: Policy) -> dict:
    drafters = {**policy.saved_drafters, **{k: s.state() for k, s in policy.drafters.items()}}
    probe_runs = {**policy.saved_probe_runs, **{k: r.state() for k, r in policy.probe_runs.items()}}
    return {
        "format": FORMAT,
        "model": policy.model,
        "tuned": {
            "skip_layers": list(policy.tuned.skip_layers),
            "draft_vocab": list(policy.tuned.draft_vocab),
        },
        "arms": [_arm_json(a) for a in policy.arms],
        "estimates": [
            {"arm": s.arm, "matched": s.matched, "bucket": s.bucket, **vars(st)}
            for s, st in policy.bandit.estimates.items()
        ],
        "drafters": drafters,
        "probe_runs": probe_runs,
        "probed": dict(policy.probed),
        "calls": policy.calls,
        "times": [
            {
                "bucket": b,
                "plain": t.plain,
                "overhead": t.overhead,
                "verify": [[e, T, s] for (e, T), s in t.verify.items()],
                "draft": dict(t.draft),
            }
            for b, t in policy.times.items()
        ],
    }


def _arm_json(arm: Arm) -> dict:
    return {
        "kind": arm.kind,
        "exit_layer": arm.exit_layer,
        "threshold": arm.threshold,
        "max_drafts": arm.max_drafts,
        "layers": list(arm.layers) if arm.layers else None,
        "fixed": arm.fixed,
    }


def save(policy: Policy, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_json(policy), indent=1) + "\n")


# -- reading -----------------------------------------------------------------------------------
class _Reader:
    """Checks of one file's fields; every error names the argument, the file and the field."""

    def __init__(self, what: str, path, num_layers: int | None, vocab_size: int | None):
        self.what, self.path, self.L, self.V = what, path, num_layers, vocab_size

    def fail(self, where: str, problem: str):
        raise ValueError(f"{self.what}: {self.path}: {where}: {problem}")

    def obj(self, x, where) -> dict:
        if not isinstance(x, dict):
            self.fail(where, f"expected an object, got {type(x).__name__}")
        return x

    def seq(self, x, where) -> list:
        if not isinstance(x, list):
            self.fail(where, f"expected a list, got {type(x).__name__}")
        return x

    def int(self, x, where, lo: int = 0, hi: int | None = None, name: str = "") -> int:
        if not isinstance(x, int) or isinstance(x, bool) or x < lo or (hi is not None and x >= hi):
            allowed = f"an int in [{lo}, {hi})" if hi is not None else f"an int >= {lo}"
            self.fail(where, f"expected {allowed}{name}, got {x!r}")
        return x

    def num(self, x, where, optional: bool = False) -> float | None:
        if x is None and optional:
            return None
        if not isinstance(x, (int, float)) or isinstance(x, bool) or not math.isfinite(x) or x < 0:
            self.fail(where, f"expected a finite number >= 0, got {x!r}")
        return float(x)

    def layer(self, x, where, lo: int = 0) -> int:
        hi = self.L if self.L is not None else None
        return self.int(x, where, lo, hi, f" (a layer of this {self.L}-layer model)" if self.L else "")

    def counts(self, x, where) -> dict:
        """``{"accepted": [...], "judged": [...]}`` of equal lengths, numbers >= 0."""
        x = self.obj(x, where)
        out = {}
        for key in ("accepted", "judged"):
            values = self.seq(x.get(key), f"{where}.{key}")
            out[key] = [self.num(v, f"{where}.{key}[{i}]") for i, v in enumerate(values)]
        if len(out["accepted"]) != len(out["judged"]):
            self.fail(where, "accepted and judged have different lengths")
        return out


def from_json(data, what: str, path, num_layers: int | None = None, vocab_size: int | None = None) -> Policy:
    """A :class:`Policy` from a file's parsed JSON, checked against a model of ``num_layers``
    layers and ``vocab_size`` tokens (when given)."""
    r = _Reader(what, path, num_layers, vocab_size)
    data = r.obj(data, "the file")
    if data.get("format") != FORMAT:
        r.fail(
            "format", f"not an eedecode policy file of this version ({FORMAT}), got {data.get('format')!r}"
        )
    model = data.get("model", "")
    if not isinstance(model, str):
        r.fail("model", f"expected a string, got {model!r}")
    tuned = r.obj(data.get("tuned", {}), "tuned")
    skip = tuple(
        r.layer(x, f"tuned.skip_layers[{i}]")
        for i, x in enumerate(r.seq(tuned.get("skip_layers", []), "tuned.skip_layers"))
    )
    vocab = tuple(
        r.int(
            x, f"tuned.draft_vocab[{i}]", 0, vocab_size, " (a token id of this model)" if vocab_size else ""
        )
        for i, x in enumerate(r.seq(tuned.get("draft_vocab", []), "tuned.draft_vocab"))
    )
    arms = [_arm(r, a, f"arms[{i}]") for i, a in enumerate(r.seq(data.get("arms", []), "arms"))]
    estimates = {}
    for i, e in enumerate(r.seq(data.get("estimates", []), "estimates")):
        where = f"estimates[{i}]"
        e = r.obj(e, where)
        if not isinstance(e.get("arm"), str) or not isinstance(e.get("matched"), bool):
            r.fail(where, "expected 'arm' (a string) and 'matched' (true or false)")
        bucket = r.int(e.get("bucket"), f"{where}.bucket", 1)
        stats = ArmStats(
            *(r.num(e.get(f), f"{where}.{f}") for f in ("tokens", "seconds", "rounds")),
            r.int(e.get("pulls"), f"{where}.pulls"),
        )
        estimates[Slot(e["arm"], e["matched"], bucket)] = stats
    drafters = {}
    for name, s in r.obj(data.get("drafters", {}), "drafters").items():
        where = f"drafters[{name!r}]"
        s = r.obj(s, where)
        drafters[name] = {k: r.counts(s.get(k), f"{where}.{k}") for k in ("calibration", "runs")}
    probe_runs = {
        n: r.counts(s, f"probe_runs[{n!r}]")
        for n, s in r.obj(data.get("probe_runs", {}), "probe_runs").items()
    }
    probed = {n: r.int(v, f"probed[{n!r}]") for n, v in r.obj(data.get("probed", {}), "probed").items()}
    times = {}
    for i, t in enumerate(r.seq(data.get("times", []), "times")):
        where = f"times[{i}]"
        t = r.obj(t, where)
        verify = {}
        for j, v in enumerate(r.seq(t.get("verify", []), f"{where}.verify")):
            if not isinstance(v, list) or len(v) != 3:
                r.fail(f"{where}.verify[{j}]", f"expected [entry layer, tokens, seconds], got {v!r}")
            key = (r.layer(v[0], f"{where}.verify[{j}][0]"), r.int(v[1], f"{where}.verify[{j}][1]", 1))
            verify[key] = r.num(v[2], f"{where}.verify[{j}][2]")
        draft = {
            n: r.num(s, f"{where}.draft[{n!r}]")
            for n, s in r.obj(t.get("draft", {}), f"{where}.draft").items()
        }
        times[r.int(t.get("bucket"), f"{where}.bucket", 1)] = StepTimes(
            r.num(t.get("plain"), f"{where}.plain", optional=True),
            r.num(t.get("overhead"), f"{where}.overhead", optional=True),
            verify,
            draft,
        )
    return Policy(
        arms,
        Bandit(arms, estimates),
        model,
        Tuned(skip, vocab),
        probed=probed,
        calls=r.int(data.get("calls", 0), "calls"),
        times=times,
        saved_drafters=drafters,
        saved_probe_runs=probe_runs,
    )


def _arm(r: _Reader, a, where: str) -> Arm:
    a = r.obj(a, where)
    if a.get("kind") not in KINDS:
        r.fail(f"{where}.kind", f"expected one of {KINDS}, got {a.get('kind')!r}")
    E = a.get("exit_layer")
    exit_layer = None if E is None else r.layer(E, f"{where}.exit_layer", lo=1)
    t = a.get("threshold")
    if t is not None and not (isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t <= 1):
        r.fail(f"{where}.threshold", f"expected a number in [0, 1] or null, got {t!r}")
    layers = a.get("layers")
    if layers is not None:
        layers = tuple(
            r.layer(x, f"{where}.layers[{i}]") for i, x in enumerate(r.seq(layers, f"{where}.layers"))
        )
    if not isinstance(a.get("fixed", False), bool):
        r.fail(f"{where}.fixed", f"expected true or false, got {a.get('fixed')!r}")
    max_drafts = r.int(a.get("max_drafts", 0), f"{where}.max_drafts")
    return Arm(a["kind"], exit_layer, t, max_drafts, layers, a.get("fixed", False))


def load(
    path, what: str = "policy_in", num_layers: int | None = None, vocab_size: int | None = None
) -> Policy:
    """Read a policy file; ``what`` names the argument in errors."""
    if not isinstance(path, (str, Path)):
        raise ValueError(f"{what}: must be a path to a policy file (JSON), got {path!r}")
    path = Path(path)
    if not path.is_file():
        why = "is a directory" if path.is_dir() else "does not exist"
        raise ValueError(f"{what}: {path} {why}; expected a policy file (JSON) from `eedecode tune`")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{what}: {path} is not an eedecode policy file (not JSON: {e})") from None
    return from_json(data, what, path, num_layers, vocab_size)
