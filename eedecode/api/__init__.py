"""The public API layer: ``generate()``, the drop-in for Hugging Face ``model.generate()``.

:mod:`.generation` runs a call (checks, the loop, the streamer, the outputs), :mod:`.plan` turns
its arguments into one validated plan through transformers' own preparation steps, and
:mod:`.validation` holds the checks that name the argument and the allowed values.
"""

from .generation import GenerateOutput, GenerationStats, generate
from .plan import DecodingConfig

__all__ = ["DecodingConfig", "GenerateOutput", "GenerationStats", "generate"]
