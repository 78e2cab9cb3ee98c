"""The adaptive mode (the default): how to draft, chosen at run time.

A bandit over drafting arms (plain decoding, lookup drafts, exit-layer drafts, drafts through a
tuned layer set), a plan from statistics (a probe of the prompt at each candidate exit layer and
the draft-length model, weighed against measured costs), what the policy learns and how it is
saved (:mod:`.policy`), and ``eedecode tune`` (:mod:`.tune`).
"""

from .mode import Adaptive
from .options import AdaptiveOptions

__all__ = ["Adaptive", "AdaptiveOptions"]
