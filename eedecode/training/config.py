"""The training run's settings: one frozen dataclass, from which the command line is built."""

from __future__ import annotations

from dataclasses import dataclass

from ..model.demo import VARIANTS


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. The defaults train one variant in about 30 minutes
    on a 2-core CPU; on a GPU pass ``device="cuda"`` and larger shapes and step counts.

    The run stops after ``max_steps`` or ``time_budget_min``, whichever comes first, and the
    learning-rate schedule follows the larger of the two fractions used, so that a run cut short
    by its time budget still ends with a decayed learning rate."""

    variant: str = "early_exit"  # "plain" | "early_exit"
    output_dir: str = "runs/train/early_exit"
    seed: int = 0
    # data: the stdlib directory (None: the running interpreter's) and optional size caps
    stdlib_dir: str | None = None
    max_train_chars: int | None = None
    max_eval_chars: int | None = None
    # tokenizer: reuse a saved one (a checkpoint directory), or train one with this many pieces
    tokenizer: str | None = None
    vocab_size: int = 4096
    tokenizer_sample_chars: int = 6_000_000
    # model shape
    hidden_size: int = 256
    num_layers: int = 8
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 640
    max_position_embeddings: int = 1024
    rope_theta: float = 10000.0
    tie_embeddings: bool = False
    # optimisation
    seq_len: int = 256
    batch_size: int = 8
    max_steps: int = 900
    time_budget_min: float | None = 30.0  # stop cleanly after this; the lr schedule ends with it
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 40
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    # early exit (variant "early_exit" only)
    exit_loss_scale: float = 1.0  # weight of the exit after d of L layers: exit_loss_scale * d / L
    exit_rotation: int = 2  # each step enables the exits with (d - 1) % rotation == step % rotation
    exit_distill: float = 0.5  # share of each exit's loss that is KL(last layer || exit) instead of CE
    exit_fraction: float = 0.25  # share of the positions on which intermediate exits are scored
    layer_dropout_max: float = 0.1  # layer dropout rate of the last layer; 0 at the first
    # evaluation, logging, saving
    eval_every: int = 150
    eval_blocks_quick: int = 16
    eval_blocks: int = 200
    eval_batch_size: int = 16
    log_every: int = 20
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    num_threads: int | None = None  # torch CPU threads (None: torch's default)
    save_dtype: str = "bfloat16"  # "bfloat16" | "float32"
    progress: bool = True

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {VARIANTS}, got {self.variant!r}")
        if self.num_layers < 2:
            raise ValueError("num_layers: need at least 2 layers")
        if self.exit_rotation < 1:
            raise ValueError("exit_rotation: must be >= 1")
        if not 0.0 <= self.exit_distill <= 1.0:
            raise ValueError("exit_distill: must be in [0, 1]")
        if not 0.0 <= self.layer_dropout_max < 1.0:
            raise ValueError("layer_dropout_max: must be in [0, 1)")
        if self.save_dtype not in ("bfloat16", "float32"):
            raise ValueError(f"save_dtype: expected bfloat16 or float32, got {self.save_dtype!r}")
