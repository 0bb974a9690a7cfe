"""Tokenized splits and batches: the one scoring window shared by training and evaluation.

Samples are rendered and prompt-masked by mlx-lm's dataset classes (`encode_rows`); the first
scored token is `first_scored(offset)`. Training batches hold samples of similar length, padded
per micro-batch; only scored tokens (not padding, not masked prompts) reach the output layer.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blogtune.io_utils import read_jsonl

PAD_TO = 32  # sequence lengths are rounded up to this: few distinct shapes, few recompiles
ROWS_PAD_TO = 64  # same for the number of scored tokens per micro-batch


@dataclass
class Encoded:
    """Tokenized split: token ids and the index of the first scored target token per sample."""

    tokens: list[list[int]]
    starts: list[int]
    n_truncated: int = 0
    longest: int = 0

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def lengths(self) -> list[int]:
        return [len(t) for t in self.tokens]


def encode_rows(rows: Sequence[dict], tokenizer, mask_prompt: bool) -> list[tuple[list[int], int]]:
    """(tokens, prompt offset) per sample, rendered by mlx-lm's own dataset classes (chat or text)."""
    from mlx_lm.tuner.datasets import create_dataset

    if not rows:
        return []
    if mask_prompt and not any(k in rows[0] for k in ("messages", "prompt")):
        mask_prompt = False  # text samples have no prompt to mask (mlx-lm would raise)
    dataset = create_dataset(list(rows), tokenizer, types.SimpleNamespace(mask_prompt=mask_prompt))
    return [(list(t), int(o)) for t, o in (dataset.process(dataset[i]) for i in range(len(dataset)))]


def first_scored(offset: int) -> int:
    """Index of the first scored token: the answer start (mlx-lm's prompt offset), never token 0.

    The scoring window is tokens[first_scored(offset) : length]: target j predicts token j + 1, as
    mlx-lm's default_loss scores it (evaluation may add the padding target after the sample).
    """
    return max(int(offset), 1)


def target_window(n_tokens: int, offset: int) -> tuple[int, int]:
    """[first, stop): the tokens of an n_tokens sample (prompt ending at `offset`) that a loss
    scores, in training and evaluation alike: from the answer start through the last real token.
    mlx-lm's default_loss also scores the zero padding after each sample (one target too many);
    we do not. A sample whose answer was truncated away still scores its last token."""
    return min(first_scored(offset), max(n_tokens - 1, 1)), n_tokens


def encode_split(path: Path, tokenizer, mask_prompt: bool, max_seq_length: int) -> Encoded:
    """Tokenize a JSONL split for training: truncated to max_seq_length, scoring starts per sample."""
    rows = list(read_jsonl(path)) if Path(path).is_file() else []
    tokens, starts, n_trunc, longest = [], [], 0, 0
    for toks, offset in encode_rows(rows, tokenizer, mask_prompt):
        longest = max(longest, len(toks))
        if len(toks) > max_seq_length:
            n_trunc += 1
            toks = toks[:max_seq_length]
        tokens.append(toks)
        starts.append(target_window(len(toks), offset)[0])
    return Encoded(tokens, starts, n_trunc, longest)


def plan_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch of batches of similar-length samples, in a seeded random order.

    Samples are shuffled, then stably sorted by length bucket, so ties break differently each
    epoch; the batch order is shuffled too. A pure function of (lengths, batch_size, seed, epoch):
    a resumed run replays exactly the same order.
    """
    n = len(lengths)
    rng = np.random.default_rng([int(seed), int(epoch)])
    order = rng.permutation(n)
    order = sorted(order.tolist(), key=lambda i: lengths[i] // PAD_TO)
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    rng.shuffle(batches)
    return batches


def eval_batches(lengths: Sequence[int], batch_size: int, limit: int, seed: int) -> list[list[int]]:
    """Validation batches (length-sorted); `limit` > 0 keeps a fixed seeded subset of them."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if limit > 0 and len(batches) > limit:
        keep = np.random.default_rng([int(seed), 7]).choice(len(batches), size=limit, replace=False)
        batches = [batches[i] for i in sorted(keep)]
    return batches


def target_weights(targets: np.ndarray, eos_ids: Sequence[int] = (), eos_weight: float = 1.0) -> np.ndarray:
    """Loss weight of each scored target: `eos_weight` (training's `train.eos_weight`) for the
    end-of-turn token(s), 1 for every other."""
    weights = np.ones(len(targets), np.float32)
    if eos_weight != 1.0 and len(eos_ids):
        weights[np.isin(targets, list(eos_ids))] = eos_weight
    return weights


def split_weight(data: Encoded, eos_ids: Sequence[int] = (), eos_weight: float = 1.0) -> float:
    """Total loss weight of a split's scored targets. `train.loss_norm: tokens` divides every
    batch's loss sum by this over the batches per epoch (the average batch's weight) instead of by
    the batch's own weight: a token counts the same whether it sits in a batch of short answers or
    of long chunks (batches hold samples of similar length), and steps keep their mean size."""
    return float(
        sum(
            target_weights(np.asarray(t[s:]), eos_ids, eos_weight).sum()
            for t, s in zip(data.tokens, data.starts, strict=True)
        )
    )


def _round_up(n: int, k: int) -> int:
    return max(k, ((n + k - 1) // k) * k)


def collate(
    data: Encoded, idx: Sequence[int], n_parts: int, eos_ids: Sequence[int] = (), eos_weight: float = 1.0
) -> list[tuple[np.ndarray, ...]]:
    """Split a batch into up to `n_parts` micro-batches (inputs, rows, targets, weights, sample ids),
    each padded on its own.

    rows: flat positions (b * T) of scored targets, padded to a multiple of ROWS_PAD_TO with
    weight 0, so only scored tokens reach the output layer and shapes repeat across batches.
    Targets weigh `target_weights`; padding 0.
    """
    idx = sorted(idx, key=lambda i: len(data.tokens[i]))
    n_parts = max(1, min(n_parts, len(idx)))
    bounds = np.linspace(0, len(idx), n_parts + 1).round().astype(int)
    parts = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=False):
        sel = idx[a:b]
        t = _round_up(max(len(data.tokens[i]) - 1 for i in sel), PAD_TO)
        inputs = np.zeros((len(sel), t), np.int32)
        rows, targets = [], []
        for r, i in enumerate(sel):
            toks = data.tokens[i]
            inputs[r, : len(toks) - 1] = toks[:-1]
            pos = np.arange(data.starts[i] - 1, len(toks) - 1)
            rows.append(r * t + pos)
            targets.append(np.asarray(toks, np.int32)[pos + 1])
        rows_a = np.concatenate(rows).astype(np.int32)
        targets_a = np.concatenate(targets).astype(np.int32)
        n = len(rows_a)
        padded = _round_up(n, ROWS_PAD_TO)
        weights = np.zeros(padded, np.float32)
        weights[:n] = target_weights(targets_a, eos_ids, eos_weight)
        rows_a = np.pad(rows_a, (0, padded - n))
        targets_a = np.pad(targets_a, (0, padded - n))
        parts.append((inputs, rows_a, targets_a, weights, np.asarray(sel)))
    return parts
