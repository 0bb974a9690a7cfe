"""The compiled training and evaluation steps, with the frozen-prefix cache.

Blocks below the trained ones are frozen, so their output per sample never changes: it is
computed once and cached (exact), which skips their forward pass from the second epoch on
(`train.prefix_cache`). Only scored tokens go through the output layer and the loss. One MLX
stream with OpenBLAS on all cores and the whole step `mx.compile`d: splitting the batch over two
streams (one BLAS thread each) was measured slower on 2 cores, 173 vs 212 tokens/s (16 layers),
133 vs 146 (all layers); perf showed each stream thread busy only about half the run.

With an mlx.distributed group each process takes its share of every batch (`shard`): gradients
and losses are weighted sums over its scored tokens, summed over ranks and divided by the batch's
total weight, which is the one-process mean gradient with the additions in another order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from blogtune.train.batches import Encoded, collate
from blogtune.train.head import projection
from blogtune.train.kernels import make_cross_entropy
from blogtune.train.memory import available_memory_bytes
from blogtune.train.settings import TrainSettings


def split_body(model, n_frozen: int) -> tuple[Callable, Callable, Callable] | None:
    """(prefix, suffix, head) with head(suffix(prefix(x))) == model(x), checked numerically.

    prefix = embeddings + the frozen blocks below the trained ones; its output per sample never
    changes, so it is computed once and cached. None when the model is not built that way.
    """
    import mlx.core as mx

    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "embed_tokens"):
        return None
    head = projection(model)
    if head is None:
        return None
    norm = getattr(inner, "norm", None)
    if norm is None:
        return None

    def prefix(x):
        h = inner.embed_tokens(x)
        for layer in inner.layers[:n_frozen]:
            h = layer(h, "causal")
        return h

    def suffix(h):
        for layer in inner.layers[n_frozen:]:
            h = layer(h, "causal")
        return norm(h)

    try:
        x = mx.array([[1, 2, 3, 4, 5, 6, 7, 8]], mx.int32)
        ok = mx.allclose(head(suffix(prefix(x))), model(x), rtol=1e-4, atol=1e-4).item()
    except Exception:  # noqa: BLE001 - another call signature: use the whole model
        ok = False
    return (prefix, suffix, head) if ok else None


def shard(idx: list[int], lengths: list[int], rank: int, world: int) -> tuple[list[int], bool]:
    """This rank's samples of a batch: contiguous in length order, so each share pads little.

    A rank left without samples (batch smaller than the world) gets one with zero weight: every
    rank must take part in each step's collectives. Returns (samples, scored).
    """
    if world == 1:
        return idx, True
    order = sorted(idx, key=lambda i: lengths[i])
    a, b = (len(order) * rank) // world, (len(order) * (rank + 1)) // world
    return (order[a:b], True) if b > a else (order[:1], False)


class Runner:
    """The compiled train/eval steps and the frozen-prefix cache."""

    def __init__(
        self, model, optimizer, settings: TrainSettings, n_layers: int, group=None, eos_ids=(), token_norm=None
    ):
        import mlx.core as mx
        import mlx.nn as nn
        from mlx.utils import tree_map

        self.mx, self.model, self.settings = mx, model, settings
        self.eos_ids = tuple(eos_ids)  # end-of-turn token(s): weigh train.eos_weight in training
        self.group = group if group is not None and group.size() > 1 else None
        self.rank, self.world = (group.rank(), group.size()) if self.group is not None else (0, 1)
        n_frozen = len(model.layers) - n_layers
        self.split = split_body(model, n_frozen)
        self.cache: dict[tuple[str, int], Any] = {}
        self.pending: list = []  # new cache entries, evaluated with the step that made them
        self.cache_bytes, self.cache_limit = 0, 0
        if self.split is not None and n_frozen > 0 and settings.prefix_cache:
            # Hidden states cost tokens x hidden x 4 bytes; keep them while that stays modest.
            self.cache_limit = int(min(2 * 1024**3, 0.15 * available_memory_bytes()))
        ce = make_cross_entropy()
        split = self.split

        def micro_loss(model, x, rows, targets, weights):
            if split is not None:
                _, suffix, head = split
                h = suffix(x)  # x: cached/computed prefix hidden states
                logits = head(h.reshape(-1, h.shape[-1])[rows])
            else:
                logits = model(x)
                logits = logits.reshape(-1, logits.shape[-1])[rows]
            return (ce(logits.astype(mx.float32), targets) * weights).sum()

        # The reported loss is a weighted mean over scored tokens (weights: 1, or train.eos_weight
        # for the end-of-turn token; 0 for padding); the count returned is of tokens, not weights.
        # The loss the gradient follows divides the same sum by the batch's weight (mlx-lm's mean
        # per batch) or, with train.loss_norm: tokens, by the average batch's (`token_norm`).
        def loss_fn(model, x, rows, targets, weights):
            total = micro_loss(model, x, rows, targets, weights)
            wsum = mx.maximum(weights.sum(), 1.0)
            objective = total / (wsum if token_norm is None else token_norm)
            return objective, ((weights > 0).sum().astype(mx.float32), total / wsum)

        def sum_loss_fn(model, x, rows, targets, weights):
            count = (weights > 0).sum().astype(mx.float32)
            return micro_loss(model, x, rows, targets, weights), weights.sum(), count

        value_and_grad = nn.value_and_grad(model, loss_fn)
        value_and_sum_grad = nn.value_and_grad(model, sum_loss_fn)
        self.state = [model.state, optimizer.state, mx.random.state]
        accum, group, world = settings.grad_accumulation, self.group, self.world

        def batch_grad(batch):
            """(mean loss, scored tokens, mean gradient) of the whole batch, over all ranks."""
            if group is None:
                (_, (ntok, loss)), grad = value_and_grad(model, *batch)
                return loss, ntok, grad
            (loss_sum, wsum, ntok), grad = value_and_sum_grad(model, *batch)
            ntok = mx.distributed.all_sum(ntok, group=group)
            total = mx.maximum(mx.distributed.all_sum(wsum, group=group), 1.0)
            denom = total if token_norm is None else token_norm
            # average_gradients divides the sum by world; scale it to sum / the whole batch's weight
            grad = tree_map(lambda g: g * (world / denom), nn.average_gradients(grad, group))
            return mx.distributed.all_sum(loss_sum, group=group) / total, ntok, grad

        def train_step(batch, prev_grad, do_update: bool):
            loss, ntok, grad = batch_grad(batch)
            if prev_grad is not None:
                grad = tree_map(lambda a, b: a + b, grad, prev_grad)
            if do_update:
                if accum > 1:
                    grad = tree_map(lambda g: g / accum, grad)
                optimizer.update(model, grad)
                grad = None
            return loss, ntok, grad

        def eval_step(batch):
            _, (ntok, loss) = loss_fn(model, *batch)
            return loss, ntok

        prefix = split[0] if split is not None else None
        if settings.compile:
            from functools import partial

            train_step = partial(mx.compile, inputs=self.state, outputs=self.state)(train_step)
            eval_step = mx.compile(eval_step, inputs=self.state)
            prefix = mx.compile(prefix, inputs=self.state) if prefix is not None else None
        self._train_step, self._eval_step, self._prefix = train_step, eval_step, prefix
        self.grad_accum = None

    def describe(self) -> str:
        if self.split is None:
            return "whole model, full logits"
        cache = (
            f"cached frozen prefix (<= {self.cache_limit / 1e9:.1f} GB)"
            if self.cache_limit
            else "no prefix cache"
        )
        return f"output layer on scored tokens only; {cache}"

    def _inputs(self, data: Encoded, split_name: str, idx: list[int], scored: bool = True) -> tuple:
        """Model inputs of one batch: token ids, or frozen-prefix hidden states (cached per sample).

        Only training batches weigh the end-of-turn token by train.eos_weight: the valid loss is
        the plain mean that evaluation computes too (one definition of held-out loss)."""
        mx = self.mx
        eos_weight = self.settings.eos_weight if split_name == "train" else 1.0
        ((inputs, rows, targets, weights, ids),) = collate(data, idx, 1, self.eos_ids, eos_weight)
        weights = weights if scored else weights * 0.0
        arrays = (mx.array(rows), mx.array(targets), mx.array(weights))
        if self.split is None:
            return (mx.array(inputs), *arrays)
        keys = [(split_name, int(i)) for i in ids]
        if all(k in self.cache for k in keys):
            t = inputs.shape[1]
            h = mx.stack([mx.pad(self.cache[k], [(0, t - self.cache[k].shape[0]), (0, 0)]) for k in keys])
        else:
            h = self._prefix(mx.array(inputs))
            self._remember(keys, data, ids, h)
        return (mx.stop_gradient(h), *arrays)

    def _remember(self, keys, data: Encoded, ids, h) -> None:
        if not self.cache_limit:
            return
        mx = self.mx
        for r, (key, i) in enumerate(zip(keys, ids, strict=True)):
            n = len(data.tokens[int(i)]) - 1
            size = n * h.shape[-1] * h.dtype.size
            if self.cache_bytes + size > self.cache_limit:
                return
            self.cache[key] = mx.contiguous(h[r, :n])
            self.pending.append(self.cache[key])
            self.cache_bytes += size

    def train_step(self, data: Encoded, idx: list[int], step: int):
        """One batch: returns (loss, scored tokens) as evaluated arrays."""
        mx = self.mx
        batch = self._inputs(data, "train", *shard(idx, data.lengths, self.rank, self.world))
        # Dropout randomness is a function of (seed, step): a resumed run replays it.
        seed = self.settings.seed * 1_000_003 + step
        # Ranks hold different samples: give each its own dropout masks.
        mx.random.seed(seed if self.world == 1 else seed * 64 + self.rank)
        do_update = step % self.settings.grad_accumulation == 0
        loss, ntok, self.grad_accum = self._train_step(batch, self.grad_accum, do_update)
        mx.eval(self.state, loss, ntok, self.grad_accum, self.pending)
        self.pending = []
        return loss, ntok

    def evaluate(self, data: Encoded, plan: list[list[int]]) -> float | None:
        if not plan:
            return None
        mx = self.mx
        self.model.eval()
        tot, n = 0.0, 0.0
        for idx in plan:
            part, scored = shard(idx, data.lengths, self.rank, self.world)
            if not scored:
                continue
            loss, ntok = self._eval_step(self._inputs(data, "valid", part))
            mx.eval(loss, ntok, self.pending)
            self.pending = []
            tot += loss.item() * ntok.item()
            n += ntok.item()
        self.model.train()
        if self.group is not None:  # one collective per evaluation: ranks may skip batches above
            tot, n = mx.distributed.all_sum(mx.array([tot, n], mx.float32), group=self.group).tolist()
        return tot / max(n, 1.0)
