"""A batch's progress, for the reward of its rounds (:class:`BatchProgress`)."""

from __future__ import annotations


class BatchProgress:
    """A batch runs until its last row is done, and a row that stopped is still computed (masked)
    until then: a round costs the same however many rows run, and brings the end closer only by
    what it moved the **laggards** (the running rows furthest behind). A round that lets some rows
    race ahead while the laggards gain one token is worth no more than a plain step.

    The reward of a round in a batch is therefore the batch size times how far it moved the
    frontier: the least progress of the rows still running, a row that stopped counting as done.
    Summed over a call that meets no EOS, that is exactly the batch's tokens (it telescopes), and
    a plain round is worth exactly the batch size. (The mean gain of the laggards would credit a round that
    starts from tied rows with its average row, not its slowest, and rate drafting arms above
    plain decoding where a batch runs slower with them, as on the demo model at batch 4.) A
    round is credited at most its largest row's gain, and its frontier is taken over the rows
    that ran in it: a laggard that stopped (EOS) moves the frontier to the next row, which no
    round earned. At batch size 1, the tokens the round produced."""

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

    def frontier(self) -> int:
        """The least progress of the running rows (a row that is done counts as finished)."""
        finish = self.max_new - 1
        return min(finish if done else p for p, done in zip(self.progress, self.done, strict=True))

    def reward(self, counts: list[int]) -> float:
        """The round's reward in tokens, from the tokens each row's round produced (0: a row
        that did not run); then each row's progress (a row that emitted nothing, or all it may,
        is done)."""
        running = [c for c in counts if c > 0]
        # the frontier before the round, over the rows that ran in it: a row that stopped (EOS)
        # in an earlier round is known to be done only now, and moves no frontier this round
        finish = self.max_new - 1
        ran = [
            finish if self.done[b] else self.progress[b]
            for b, c in enumerate(counts[: len(self.progress)])
            if c > 0
        ]
        before = min(ran, default=finish)
        for b, c in enumerate(counts[: len(self.progress)]):
            self.progress[b] += c
            self.done[b] = self.done[b] or c == 0 or self.progress[b] >= self.max_new - 1
        if len(counts) == 1 or not running:
            return float(sum(running))
        return float(len(self.progress) * min(self.frontier() - before, max(running)))
