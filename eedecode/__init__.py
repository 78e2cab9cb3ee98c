"""eedecode: self-speculative (early-exit) decoding for LLaMA-family models.

``eedecode.generate(model, **inputs, exit_layer=E, num_speculations=k, max_new_tokens=n)`` is a
drop-in for Hugging Face ``model.generate(**inputs, max_new_tokens=n)``: the model drafts with its
own first ``E`` layers and LM head and verifies the drafts in one pass of its remaining layers.
"""

from .config import DecodingConfig
from .generation import GenerateOutput, GenerationStats, generate
from .model.compat import SUPPORTED_ARCHITECTURES
from .model.demo import demo_model_path
from .model.loading import LoadedModel, load_model
from .model.runner import ModelRunner
from .modes import Strategy, register, strategy_names

__all__ = [
    "DecodingConfig",
    "GenerateOutput",
    "GenerationStats",
    "LoadedModel",
    "ModelRunner",
    "SUPPORTED_ARCHITECTURES",
    "Strategy",
    "demo_model_path",
    "generate",
    "load_model",
    "register",
    "strategy_names",
]
__version__ = "0.1.0"
