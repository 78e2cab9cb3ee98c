"""A batch's progress, for the reward of its rounds (:class:`BatchProgress`)."""

from __future__ import annotations


class BatchProgress:
    """A batch runs until its last row is done, so a round that lets some rows race ahead while
    the **laggards** (the running rows furthest behind) gain one token brings the end no closer
    than a plain step. The reward of a round in a batch is therefore the running rows times what
    the laggards gained (their mean: the least of several rows' gains would undervalue drafting,
    whose gains vary from row to row and even out over the rounds); at batch size 1, the tokens
    the round produced."""

    def __init__(self, batch_size: int, max_new_tokens: int):
        self.progress = [0] * batch_size  # tokens each row emitted in rounds
        self.done = [False] * batch_size
        self.max_new = max_new_tokens
        self.behind: list[int] = list(range(batch_size))

    def laggards(self) -> list[int]:
        """The rows not known to be done with the fewest tokens, for this round (every row tied
        at the start; a row that stopped in the last round may still be among them)."""
        going = [b for b, done in enumerate(self.done) if not done]
        least = min((self.progress[b] for b in going), default=0)
        self.behind = [b for b in going if self.progress[b] == least] or [0]
        return self.behind

    def reward(self, counts: list[int]) -> float:
        """The round's reward in tokens, from the tokens each row's round produced (0: a row
        that did not run); then each row's progress (a row that emitted nothing, or all it may,
        is done)."""
        running = [c for c in counts if c > 0]
        if len(counts) == 1 or not running:
            tokens = sum(running)
        else:
            gained = [counts[b] for b in self.behind if b < len(counts) and counts[b] > 0] or running
            tokens = len(running) * sum(gained) / len(gained)
        for b, c in enumerate(counts[: len(self.progress)]):
            self.progress[b] += c
            self.done[b] = self.done[b] or c == 0 or self.progress[b] >= self.max_new - 1
        return tokens
