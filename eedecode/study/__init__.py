"""Studies of intermediate-layer agreement, built on the model runner and the exit head: the
agreement study (:func:`agreement_study`, ``eedecode agreement``) and the light per-layer
statistics that training and the synthetic models use (:func:`layer_stats`)."""

from ..model.layer_stats import layer_stats
from .agreement import StudyConfig, agreement_study, study_blocks
from .bootstrap import BootstrapConfig
from .tuned_lens import TunedLens, TunedLensConfig, fit_tuned_lens

__all__ = [
    "BootstrapConfig",
    "StudyConfig",
    "TunedLens",
    "TunedLensConfig",
    "agreement_study",
    "fit_tuned_lens",
    "layer_stats",
    "study_blocks",
]
