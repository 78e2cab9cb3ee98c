"""Drafting: what a speculative mode proposes each round, and what it learns about its drafts.

The drafters (exit-layer drafts from the model's first layers and its head, drafts with some
layers skipped, lookup drafts copied from the context, and per-row mixtures of them), the
verification they share, the draft head (a translator or a smaller vocabulary in front of the
LM head), the draft stop rules that end a row's drafting early (:mod:`.stop_rules`) and the
draft-length model (:mod:`.run_lengths`)."""
