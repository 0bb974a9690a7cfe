"""The output layer as its own function, so that only scored positions go through it.

Training, evaluation and the exam score a few positions of each sequence; the output layer over
the whole vocabulary is the costliest per-position part of the model, so they run the body
(`model.model`), keep the scored rows, then apply `head`. The head must be exactly what
`model(x)` applies after the body: lm_head or the tied embeddings, and gemma2's final logit
soft-capping. It is checked numerically; a model built another way gets None (callers then use
the whole model's logits).
"""

from __future__ import annotations

from collections.abc import Callable

PROBE = [[1, 2, 3, 4, 5, 6, 7, 8]]


def projection(model) -> Callable | None:
    """hidden -> logits without any post-processing: lm_head, or the tied embeddings."""
    # Looked up at each call: adapters loaded later may replace these modules.
    if hasattr(model, "lm_head"):
        return lambda h: model.lm_head(h)
    if hasattr(getattr(getattr(model, "model", None), "embed_tokens", None), "as_linear"):
        return lambda h: model.model.embed_tokens.as_linear(h)
    return None


def output_head(model) -> Callable | None:
    """head with head(model.model(x)) == model(x), checked on a probe; None if not so."""
    import mlx.core as mx

    proj = projection(model)
    if proj is None or getattr(model, "model", None) is None:
        return None
    cap = getattr(getattr(model, "args", None), "final_logit_softcapping", None)

    def head(h):
        out = proj(h)
        return mx.tanh(out / cap) * cap if cap else out

    try:
        x = mx.array(PROBE, mx.int32)
        ok = mx.allclose(head(model.model(x)), model(x), rtol=1e-4, atol=1e-4).item()
    except Exception:  # noqa: BLE001 - another call signature or output: not this layout
        ok = False
    return head if ok else None
