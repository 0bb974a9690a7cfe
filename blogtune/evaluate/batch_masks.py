"""Batch caches on gemma2 with grouped-query attention (mlx-lm 0.32.2).

A left-padded batch cache gives attention a (B, 1, L, T) padding mask. mlx-lm's gemma2 computes
its soft-capped scores inline, as (B, kv_heads, repeats, L, T) under GQA, and applies the mask
as is: B lines up against kv_heads, so any batch of 3 or more prompts fails with
"[broadcast_shapes] ... cannot be broadcast" (gemma-2-2b: 4 kv heads). Other architectures go
through mlx-lm's scaled_dot_product_attention and are not affected. While batched generation or
scoring runs, gemma2's attention gets the mask with the repeats axis added: (B, 1, 1, L, T).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

AFFECTED = {"mlx_lm.models.gemma2"}


def _with_repeats_axis(call):
    import mlx.core as mx

    def patched(self, x, mask=None, cache=None):
        if getattr(self, "repeats", 1) > 1 and isinstance(mask, mx.array) and mask.ndim == 4:
            mask = mx.expand_dims(mask, 2)
        return call(self, x, mask, cache)

    return patched


@contextlib.contextmanager
def batch_masks_fixed(model) -> Iterator[None]:
    """Inside: the model's gemma2 attention takes batch caches' masks (restored after)."""
    classes = {
        type(m)
        for _, m in model.named_modules()
        if type(m).__module__ in AFFECTED and type(m).__name__ == "Attention"
    }
    saved = [(cls, cls.__call__) for cls in classes]
    for cls, call in saved:
        cls.__call__ = _with_repeats_axis(call)
    try:
        yield
    finally:
        for cls, call in saved:
            cls.__call__ = call
