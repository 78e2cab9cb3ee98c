"""Training recipe for eedecode's demo models: a small LLaMA trained on the Python standard library.

Every machine that runs eedecode has the same free corpus: the ``.py`` sources of the running
interpreter's standard library. The recipe trains a SentencePiece BPE tokenizer and a
``LlamaForCausalLM`` of a few million parameters on them, and saves a Hugging Face checkpoint that
``AutoModelForCausalLM`` / ``AutoTokenizer`` load offline, with the decoding settings it
recommends (``eedecode.json``). Two variants:

- ``plain``: next-token loss on the last layer only (the "no joint training" case, arXiv 2412.01455).
- ``early_exit``: LayerSkip's recipe (Elhoushi et al. 2024, arXiv 2404.16710, section 4): early-exit
  losses through the shared final norm + LM head, on a rotating subset of layers with weights
  growing with depth, layer dropout rising with depth, and optional self-distillation.

Modules, one job each: :mod:`.config` (the run's settings), :mod:`.data` (corpus, tokenizer,
blocks, benchmark prompts), :mod:`.losses` (the LayerSkip objective), :mod:`.evaluate` (held-out
per-layer statistics), :mod:`.loop` (model, optimiser, schedule, loop), :mod:`.checkpoint`
(saving, training log, ``eedecode.json``), :mod:`.cli` (``eedecode train``,
``python -m eedecode.training``).
"""

from .checkpoint import recommend_decoding, save_checkpoint
from .config import TrainConfig
from .data import HELD_OUT_MODULES, PROMPTS_PATH, stdlib_prompts, write_prompts
from .evaluate import evaluate_layers, format_layer_table
from .loop import TrainResult, build_model, lr_at, train
from .losses import early_exit_loss, exit_hidden_states, exit_loss_weights, layer_dropout_rates

__all__ = [
    "HELD_OUT_MODULES",
    "PROMPTS_PATH",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "early_exit_loss",
    "evaluate_layers",
    "exit_hidden_states",
    "exit_loss_weights",
    "format_layer_table",
    "layer_dropout_rates",
    "lr_at",
    "recommend_decoding",
    "save_checkpoint",
    "stdlib_prompts",
    "train",
    "write_prompts",
]
