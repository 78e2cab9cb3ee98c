"""Studies of intermediate-layer agreement, built on the model runner and the exit head."""

from .layers import layer_stats

__all__ = ["layer_stats"]
