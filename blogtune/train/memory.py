"""Memory preflight: peak training memory from the model config, before any weights load.

Used by the workflow's preflight (fail at parse time, not after an hour) and by training itself
(on the real, loaded model). Pure arithmetic on the config: no MLX import.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from blogtune.train.settings import TrainSettings, key_matches


class MemoryError_(RuntimeError):
    """Training would not fit in memory; the message has the estimate and the settings to lower."""


@dataclass
class MemoryEstimate:
    params: int
    weights_bytes: int
    trainable_params: int
    optimizer_bytes: int  # trainable params + grads + 2 Adam moments
    activation_bytes: int
    logits_bytes: int
    overhead_bytes: int
    settings: dict = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return (
            self.weights_bytes
            + self.optimizer_bytes
            + self.activation_bytes
            + self.logits_bytes
            + self.overhead_bytes
        )

    def describe(self) -> str:
        gb = 1024**3
        return (
            f"~{self.total_bytes / gb:.1f} GB = weights {self.weights_bytes / gb:.2f} "
            f"+ trainable/optimizer {self.optimizer_bytes / gb:.2f} "
            f"+ activations {self.activation_bytes / gb:.2f} + logits {self.logits_bytes / gb:.2f} "
            f"+ runtime {self.overhead_bytes / gb:.2f} ({self.params / 1e6:.0f}M params, "
            f"{self.trainable_params / 1e6:.2f}M trainable)"
        )


def _dims(cfg: dict) -> dict:
    text = cfg.get("text_config") or {}
    get = lambda k, d=None: cfg.get(k, text.get(k, d))  # noqa: E731
    h = int(get("hidden_size", get("d_model", 0)) or 0)
    if not h:
        raise ValueError("model config has no hidden_size")
    heads = int(get("num_attention_heads", 1))
    hd = int(get("head_dim") or h // heads)
    inter = int(get("intermediate_size", 4 * h))
    experts = int(get("num_local_experts") or get("num_experts") or get("n_routed_experts") or 1)
    if experts > 1:
        inter = int(get("moe_intermediate_size") or inter) * experts
    return dict(
        h=h,
        layers=int(get("num_hidden_layers", get("n_layer", 1))),
        heads=heads,
        kv=int(get("num_key_value_heads") or heads),
        hd=hd,
        inter=inter,
        vocab=int(get("vocab_size", 32000)),
        tied=bool(get("tie_word_embeddings", False)),
    )


def _linear_shapes(d: dict) -> dict[str, tuple[int, int]]:
    """(in, out) of each linear in one llama-style block."""
    h, q, kv, i = d["h"], d["heads"] * d["hd"], d["kv"] * d["hd"], d["inter"]
    return {
        "self_attn.q_proj": (h, q),
        "self_attn.k_proj": (h, kv),
        "self_attn.v_proj": (h, kv),
        "self_attn.o_proj": (q, h),
        "mlp.gate_proj": (h, i),
        "mlp.up_proj": (h, i),
        "mlp.down_proj": (i, h),
    }


def estimate_memory(model_config: dict, bits: int, settings: TrainSettings) -> MemoryEstimate:
    """Peak training memory from the model config, weight bits and settings (worst case: full-length batches).

    Calibrated on SmolLM2-135M fp32 on CPU (batch 4 x 400 tokens, 16 LoRA layers: measured
    MLX peak 3.8 GB, estimate 3.9 GB). Activation constants per trained layer and token: ~10
    hidden-size vectors, 4 intermediate-size vectors, and 2 seq-length attention rows per head.
    """
    d = _dims(model_config)
    shapes = _linear_shapes(d)
    per_layer = sum(a * b for a, b in shapes.values()) + 2 * d["h"]
    embed = d["vocab"] * d["h"]
    params = d["layers"] * per_layer + embed * (1 if d["tied"] else 2) + d["h"]
    bytes_per = bits / 8 * (1 + (32 / 64) / bits if bits < 16 else 1)  # + group scales/biases
    weights = int(params * bytes_per)
    n_train = d["layers"] if settings.num_layers == -1 else min(settings.num_layers, d["layers"])
    if settings.fine_tune_type == "full":
        trainable = n_train * per_layer
    else:
        wanted = settings.keys
        chosen = [
            (a, b)
            for name, (a, b) in shapes.items()
            if not wanted or any(key_matches(name, k) for k in wanted)
        ]
        per = sum(
            settings.rank * (a + b) + (b if settings.fine_tune_type == "dora" else 0) for a, b in chosen
        )
        trainable = n_train * per
    act_dtype = 4 if bits >= 32 else 2
    tokens = settings.batch_size * settings.max_seq_length
    per_token_layer = (10 * d["h"] + 4 * d["inter"]) * act_dtype
    attn_per_token_layer = 2 * d["heads"] * settings.max_seq_length * 4
    layer_acts = tokens * (per_token_layer + attn_per_token_layer)
    if settings.grad_checkpoint:
        activations = n_train * tokens * d["h"] * act_dtype + layer_acts
    else:
        activations = n_train * layer_acts
    logits = tokens * d["vocab"] * 4 * 3  # logits, probabilities, their gradient (fp32)
    est = MemoryEstimate(
        params=int(params),
        weights_bytes=weights,
        trainable_params=int(trainable),
        optimizer_bytes=int(trainable * 16),
        activation_bytes=int(activations),
        logits_bytes=int(logits),
        overhead_bytes=0,
        settings={
            k: getattr(settings, k)
            for k in ("batch_size", "max_seq_length", "num_layers", "grad_checkpoint", "fine_tune_type")
        },
    )
    est.overhead_bytes = int(0.4 * 1024**3 + 0.1 * est.total_bytes)
    return est


def check_fits(estimate: MemoryEstimate, available_bytes: int, headroom: float = 0.9) -> None:
    """Raise MemoryError_ when the estimate exceeds `headroom` x available memory."""
    limit = available_bytes * headroom
    if estimate.total_bytes <= limit:
        return
    s = estimate.settings
    hints = [
        f"train.batch_size (now {s.get('batch_size')}; 1 works, with train.grad_accumulation to keep the effective batch)",
        f"train.max_seq_length (now {s.get('max_seq_length')}; chunk posts shorter)",
        f"train.num_layers (now {s.get('num_layers')})",
    ]
    if not s.get("grad_checkpoint"):
        hints.append("train.grad_checkpoint: true (recompute activations; ~30% slower)")
    hints.append(
        "model.quantize: true (4-bit base weights; fast on Metal/CUDA only), or a smaller base_model"
    )
    raise MemoryError_(
        f"training needs {estimate.describe()}, but only {available_bytes / 1024**3:.1f} GB is available. "
        "Lower one of: " + "; ".join(hints)
    )


def available_memory_bytes() -> int:
    """Memory this machine can give training now (Linux: MemAvailable; else physical memory)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 16 * 1024**3
