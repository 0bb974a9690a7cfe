"""Which tokens of a sample a loss scores: the one definition training and evaluation share.

mlx-lm's default_loss scores `offset <= step <= length`, which also scores the zero padding
after each sample (one target too many). blogtune scores the targets from the first answer
token (never token 0: nothing predicts it) through the sample's last real token, in training
(blogtune.training) and in evaluation (blogtune.evaluation) alike.
"""

from __future__ import annotations


def target_window(n_tokens: int, offset: int) -> tuple[int, int]:
    """[first, stop): indices of the tokens scored as targets in a sample of n_tokens tokens
    whose prompt ends at `offset` (0 when nothing is masked)."""
    first = min(max(int(offset), 1), max(n_tokens - 1, 1))
    return first, n_tokens
