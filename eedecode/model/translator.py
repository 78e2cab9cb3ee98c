"""Translators in front of the exit head: the tuned lens (Belrose et al. 2023, "Eliciting Latent
Predictions from Transformers with the Tuned Lens", arXiv 2303.08112), one affine map per exit
depth, ``h -> W_d h + b_d``, that the agreement study trains (:mod:`eedecode.study.tuned_lens`) and
drafters can draft through (the model itself is unchanged).

File format (``tuned_lens.safetensors``): a safetensors file with, per translated exit depth
``d``, the float32 tensors ``translators.<d>.weight`` ``[H, H]`` and ``translators.<d>.bias``
``[H]``; its string metadata holds ``format`` (``eedecode-tuned-lens``), ``version`` (``1``),
``num_layers``, ``hidden_size``, ``depths`` (comma-separated), ``model`` and ``training`` (a JSON
record). A depth without a translator (the last layer) is the logit lens. :func:`read_lens`
checks every field against the model before anything is loaded onto it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

Tensor = torch.Tensor

FORMAT, VERSION = "eedecode-tuned-lens", "1"
_HOW = "expected tuned_lens.safetensors from `eedecode agreement --lens tuned`"


class TunedLens(torch.nn.Module):
    """Translators for the exit depths ``depths`` below ``num_layers``; ``lens(d, h)`` translates
    ``h [..., H]`` (identity at depths without a translator)."""

    def __init__(self, hidden_size: int, num_layers: int, depths):
        super().__init__()
        self.hidden_size, self.num_layers = hidden_size, num_layers
        self.translators = torch.nn.ModuleDict()
        self.metadata: dict = {}
        for d in sorted(set(depths)):
            if 1 <= d < num_layers:
                t = torch.nn.Linear(hidden_size, hidden_size)
                with torch.no_grad():
                    t.weight.copy_(torch.eye(hidden_size))
                    t.bias.zero_()
                self.translators[str(d)] = t

    @property
    def depths(self) -> list[int]:
        return sorted(int(d) for d in self.translators)

    def forward(self, depth: int, hidden: Tensor) -> Tensor:
        t = self.translators[str(depth)] if str(depth) in self.translators else None  # noqa: SIM401 (no .get)
        return hidden if t is None else t(hidden.to(t.weight.dtype)).to(hidden.dtype)

    def save(self, path: str | Path, *, model: str = "", training: dict | None = None) -> Path:
        from safetensors.torch import save_file

        tensors = {
            f"translators.{k}": v.detach().float().cpu().contiguous()
            for k, v in self.translators.state_dict().items()
        }
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "num_layers": str(self.num_layers),
            "hidden_size": str(self.hidden_size),
            "depths": ",".join(map(str, self.depths)),
            "model": model,
            "training": json.dumps(training or {}),
        }
        save_file(tensors, str(path), metadata=meta)
        return Path(path)

    @classmethod
    def load(
        cls, path: str | Path, device=None, what: str = "translators", num_layers=None, hidden_size=None
    ) -> TunedLens:
        """Read a lens file, checked (:func:`read_lens`) against a model of ``num_layers`` layers
        and ``hidden_size`` when given."""
        meta, depths, tensors = read_lens(path, what, num_layers, hidden_size, tensors=True)
        lens = cls(int(meta["hidden_size"]), int(meta["num_layers"]), depths)
        lens.translators.load_state_dict(tensors)
        lens.metadata = meta
        return lens.to(device) if device is not None else lens


def read_lens(path, what: str = "translators", num_layers=None, hidden_size=None, tensors: bool = False):
    """``(metadata, depths, tensors or None)`` of a lens file, every field checked: a ValueError
    naming ``what``, the file and the field otherwise. ``tensors``: also read and check them."""
    from safetensors import safe_open

    if not isinstance(path, (str, Path)) or not Path(path).is_file():
        raise ValueError(f"{what}: {path!r} is not a file; {_HOW}")

    def fail(problem: str):
        raise ValueError(f"{what}: {path}: {problem}")

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            keys = list(f.keys())  # noqa: SIM118 (a safetensors handle)
            state = {k[len("translators.") :]: f.get_tensor(k) for k in keys} if tensors else None
    except ValueError:
        raise
    except Exception as e:  # safetensors raises its own error types for a file that is not one
        raise ValueError(f"{what}: {path} is not a safetensors file ({e})") from None
    if meta.get("format") != FORMAT:
        fail(f"not an eedecode tuned lens (format {meta.get('format')!r}); {_HOW}")
    try:
        L, H = int(meta["num_layers"]), int(meta["hidden_size"])
        depths = [int(d) for d in meta.get("depths", "").split(",") if d]
    except (KeyError, ValueError) as e:
        fail(f"metadata num_layers, hidden_size and depths must be integers ({e!r})")
    if num_layers is not None and num_layers != L:
        fail(f"trained for a model of {L} layers, not {num_layers}")
    if hidden_size is not None and hidden_size != H:
        fail(f"trained for hidden size {H}, not this model's {hidden_size}")
    bad = [d for d in depths if not 1 <= d < L]
    if bad:
        fail(f"metadata depths {bad} are outside 1..{L - 1}")
    expected = {f"translators.{d}.{p}" for d in depths for p in ("weight", "bias")}
    if set(keys) != expected:
        missing, extra = sorted(expected - set(keys)), sorted(set(keys) - expected)
        fail(f"tensors do not match the depths {depths} (missing {missing}, unexpected {extra})")
    if state is not None:
        for d in depths:
            w, b = state[f"{d}.weight"], state[f"{d}.bias"]
            if tuple(w.shape) != (H, H) or tuple(b.shape) != (H,) or not w.is_floating_point():
                got = f"{tuple(w.shape)} and {tuple(b.shape)}"
                fail(f"translators.{d} must be float [{H}, {H}] and [{H}], got {got}")
    return meta, depths, state
