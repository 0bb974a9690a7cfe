"""LoRA / DoRA / full fine-tuning on mlx-lm's building blocks, with real resume and a memory preflight.

We keep mlx-lm's models, LoRA/DoRA layers (`linear_to_lora_layers`), dataset classes and adapter
format (`adapters.safetensors` + `adapter_config.json`, what `mlx_lm.fuse --adapter-path` and
`mlx_lm.load(..., adapter_path=)` read) and write our own loop around them, because the loop is
where the CPU time and the resume state live. What a CPU profile showed, and what we do:

- Matmuls must go to OpenBLAS, not the wheel's reference BLAS (blogtune.blas, ~40x).
- Batches hold samples of similar length and are padded per micro-batch; only scored tokens (not
  padding, not masked prompts) go through the 49k-vocab output layer and the loss.
- mlx's exp/logsumexp/softmax CPU kernels are scalar (~70 Melem/s, 10x below torch). The loss is
  a custom-vjp cross-entropy with one exp pass; attention is blocked (query blocks skip the keys
  the causal mask hides) with a fused exp and the softmax division moved after the PV matmul;
  swiglu gets a fused backward. Compiled with vectorizing JIT flags (blogtune.blas) these run at
  ~600+ Melem/s. Attention went from ~47% of a step to ~20%.
- One MLX stream with OpenBLAS on all cores, and the whole step `mx.compile`d. Splitting the batch
  over two streams (one BLAS thread each) was measured slower on 2 cores: 173 vs 212 tokens/s
  (16 layers), 133 vs 146 (all layers); perf showed each stream thread busy only about half the
  run, so the halves did not overlap as hoped. BLOGTUNE_MLX_STREAMS=2 keeps that path for benchmarks.
- Blocks below the trained ones are frozen, so their output per sample never changes: it is
  computed once and cached (exact), which skips their forward pass from the second epoch on.
- Checkpoints hold adapter weights, optimizer state (incl. the LR-schedule step) and the step;
  the data order (seed, epoch) and the dropout RNG (seed, step) are pure functions of it. They
  are keyed by a fingerprint of settings + data + base model, written every `save_every` steps
  and on SIGTERM/SIGINT.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from blogtune.io_utils import atomic_dir, atomic_open, atomic_write_json, read_jsonl
from blogtune.loss_window import target_window

log = logging.getLogger(__name__)

FINE_TUNE_TYPES = ("lora", "dora", "full")
LR_SCHEDULES = ("constant", "cosine", "linear")
OPTIMIZERS = ("adam", "adamw")
LOSS_COLUMNS = (
    "step",
    "split",
    "loss",
    "learning_rate",
    "tokens_per_second",
    "trained_tokens",
    "peak_memory_gb",
    "elapsed_s",
)
PAD_TO = 32  # sequence lengths are rounded up to this: few distinct shapes, few recompiles
ROWS_PAD_TO = 64  # same for the number of scored tokens per micro-batch
CHECKPOINT = "checkpoint"
PREFIX_CACHE = True  # cache the frozen layers' output per sample (exact; tests switch it off)
# Settings that change what is computed; the rest only change logging/eval cadence.
_NOT_FINGERPRINTED = ("steps_per_report", "steps_per_eval", "val_batches", "save_every", "compile")


class MemoryError_(RuntimeError):
    """Training would not fit in memory; the message has the estimate and the settings to lower."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM/SIGINT arrived; a checkpoint was written to resume_dir first."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"interrupted by signal {signum} at step {step}; checkpoint saved")
        self.signum, self.step = signum, step


# --------------------------------------------------------------------------- settings


@dataclass
class TrainSettings:
    fine_tune_type: str = "lora"  # lora | dora | full
    num_layers: int = -1  # top transformer blocks that train (-1: all)
    rank: int = 16
    scale: float = 20.0  # mlx-lm's LoRA scale (= alpha / rank in PEFT terms)
    dropout: float = 0.0
    keys: list[str] | None = None  # target modules, e.g. ["self_attn.q_proj", "v_proj"]; None: all linears
    learning_rate: float = 2e-4
    lr_schedule: str = "cosine"  # constant | cosine | linear (after warmup)
    warmup_steps: int = 10  # optimizer updates of linear warmup
    min_learning_rate: float = 0.0
    optimizer: str = "adamw"  # adam | adamw
    weight_decay: float = 0.0
    iters: int | None = None  # training steps (batches); wins over epochs when both are set
    epochs: float | None = 2
    batch_size: int = 4
    grad_accumulation: int = 1
    max_seq_length: int = 512  # longer samples are truncated (and counted in the log)
    grad_checkpoint: bool = False
    mask_prompt: bool = True  # score only the answer tokens of chat samples
    seed: int = 0
    steps_per_report: int = 10
    steps_per_eval: int = 50
    val_batches: int = -1  # -1: the whole validation set
    save_every: int = 50  # resume checkpoint cadence (steps)
    compile: bool = True  # mx.compile the step (off only for debugging)

    @classmethod
    def from_dict(cls, values: dict | None) -> TrainSettings:
        """Build from a config mapping; unknown keys are an error that names them."""
        values = dict(values or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"train: unknown setting(s) {unknown}; known: {sorted(names)}")
        settings = cls(**values)
        settings.validate()
        return settings

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        def bad(key: str, why: str) -> ValueError:
            return ValueError(f"train.{key}: {why} (got {getattr(self, key)!r})")

        if self.fine_tune_type not in FINE_TUNE_TYPES:
            raise bad("fine_tune_type", f"must be one of {FINE_TUNE_TYPES}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise bad("lr_schedule", f"must be one of {LR_SCHEDULES}")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"must be one of {OPTIMIZERS}")
        if self.num_layers == 0 or self.num_layers < -1:
            raise bad("num_layers", "must be -1 (all) or >= 1")
        for key in (
            "rank",
            "batch_size",
            "grad_accumulation",
            "steps_per_report",
            "steps_per_eval",
            "save_every",
        ):
            if int(getattr(self, key)) < 1:
                raise bad(key, "must be >= 1")
        if self.max_seq_length < 16:
            raise bad("max_seq_length", "must be >= 16")
        if not 0 <= self.dropout < 1:
            raise bad("dropout", "must be in [0, 1)")
        if self.learning_rate <= 0:
            raise bad("learning_rate", "must be > 0")
        if self.iters is None and self.epochs is None:
            raise ValueError("train: set iters or epochs")
        if self.iters is not None and self.iters < 1:
            raise bad("iters", "must be >= 1")
        if self.iters is None and self.epochs is not None and self.epochs <= 0:
            raise bad("epochs", "must be > 0")
        if self.val_batches < -1 or self.val_batches == 0:
            raise bad("val_batches", "must be -1 (all) or >= 1")


def iters_for(settings: TrainSettings, n_train: int) -> int:
    """Training steps (batches): `iters` if set, else epochs x batches per epoch."""
    if settings.iters is not None:
        return int(settings.iters)
    per_epoch = math.ceil(n_train / min(settings.batch_size, max(n_train, 1)))
    return max(1, math.ceil(float(settings.epochs) * per_epoch))


# --------------------------------------------------------------------------- memory preflight


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
            if not wanted or any(_key_matches(name, k) for k in wanted)
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


# --------------------------------------------------------------------------- data


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


def encode_split(path: Path, tokenizer, mask_prompt: bool, max_seq_length: int) -> Encoded:
    """Render and tokenize a JSONL split with mlx-lm's own dataset classes (chat or text format)."""
    from mlx_lm.tuner.datasets import create_dataset

    rows = list(read_jsonl(path)) if Path(path).is_file() else []
    if not rows:
        return Encoded([], [])
    if mask_prompt and not any(k in rows[0] for k in ("messages", "prompt")):
        mask_prompt = False  # text samples have no prompt to mask (mlx-lm would raise)
    dataset = create_dataset(rows, tokenizer, types.SimpleNamespace(mask_prompt=mask_prompt))
    tokens, starts, n_trunc, longest = [], [], 0, 0
    for i in range(len(dataset)):
        toks, offset = dataset.process(dataset[i])
        toks = list(toks)
        longest = max(longest, len(toks))
        if len(toks) > max_seq_length:
            n_trunc += 1
            toks = toks[:max_seq_length]
        tokens.append(toks)
        starts.append(target_window(len(toks), offset)[0])  # shared with evaluation
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


def _round_up(n: int, k: int) -> int:
    return max(k, ((n + k - 1) // k) * k)


def collate(data: Encoded, idx: Sequence[int], n_parts: int) -> list[tuple[np.ndarray, ...]]:
    """Split a batch into up to `n_parts` micro-batches (inputs, rows, targets, weights, sample ids),
    each padded on its own.

    rows: flat positions (b * T) of scored targets, padded to a multiple of ROWS_PAD_TO with
    weight 0, so only scored tokens reach the output layer and shapes repeat across batches.
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
        weights[:n] = 1.0
        rows_a = np.pad(rows_a, (0, padded - n))
        targets_a = np.pad(targets_a, (0, padded - n))
        parts.append((inputs, rows_a, targets_a, weights, np.asarray(sel)))
    return parts


# --------------------------------------------------------------------------- results


@dataclass
class TrainResult:
    adapter_dir: Path
    iters: int
    final_train_loss: float | None
    final_valid_loss: float | None
    base_valid_loss: float | None
    tokens_per_second: float  # scored (non-padding) training tokens per second of training
    trained_tokens: int
    peak_memory_gb: float
    train_seconds: float
    total_seconds: float
    samples_over_max_seq_length: dict[str, int]
    resumed_from_step: int = 0
    n_train: int = 0
    n_valid: int = 0
    step_stats: list[tuple[int, float, float]] = field(
        default_factory=list
    )  # (tokens, seconds, loss) per step

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["adapter_dir"] = str(self.adapter_dir)
        d.pop("step_stats")
        return d


# --------------------------------------------------------------------------- model pieces


def _key_matches(path: str, key: str) -> bool:
    return path == key or path.endswith("." + key)


def resolve_keys(model, keys: Sequence[str] | None) -> list[str] | None:
    """Map user keys ("q_proj" or "self_attn.q_proj") to mlx-lm's module paths inside a block."""
    if not keys:
        return None
    import mlx.nn as nn

    names = [n for n, m in model.layers[-1].named_modules() if isinstance(m, (nn.Linear, nn.QuantizedLinear))]
    resolved, missing = [], []
    for key in keys:
        hits = [n for n in names if _key_matches(n, key)]
        (resolved.extend(hits) if hits else missing.append(key))
    if missing:
        raise ValueError(f"train.keys: {missing} match no linear layer; available: {sorted(names)}")
    return sorted(set(resolved))


def _make_schedule(settings: TrainSettings, total_updates: int) -> Callable:
    import mlx.core as mx

    lr, lo = float(settings.learning_rate), float(settings.min_learning_rate)
    warm = int(settings.warmup_steps)
    span = max(1, total_updates - warm)

    def schedule(step):
        s = step.astype(mx.float32) if isinstance(step, mx.array) else mx.array(step, mx.float32)
        t = mx.clip((s - warm) / span, 0.0, 1.0)
        if settings.lr_schedule == "cosine":
            main = lo + (lr - lo) * 0.5 * (1.0 + mx.cos(math.pi * t))
        elif settings.lr_schedule == "linear":
            main = lr + (lo - lr) * t
        else:
            main = mx.array(lr, mx.float32)
        if warm <= 0:
            return main
        return mx.where(s < warm, lr * (s + 1.0) / warm, main)

    return schedule


def _make_optimizer(settings: TrainSettings, total_updates: int):
    import mlx.optimizers as optim

    lr = _make_schedule(settings, total_updates)
    if settings.optimizer == "adamw":
        return optim.AdamW(learning_rate=lr, weight_decay=settings.weight_decay)
    return optim.Adam(learning_rate=lr)


def rope_overrides(model_dir: Path) -> dict:
    """Safety net for an MLX folder converted before blogtune lifted rope keys (blogtune.model_prep)."""
    from blogtune.model_prep import mlx_rope_keys

    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    out = mlx_rope_keys(cfg)
    if out:
        log.warning("%s/config.json lacks a top-level rope_theta; using %s", model_dir, out["rope_theta"])
    return out


def _on_cpu() -> bool:
    import mlx.core as mx

    return mx.default_device() == mx.cpu


_CAUSAL: dict = {}


def _causal_bias(t: int, dtype):
    import mlx.core as mx

    key = (t, dtype)
    if key not in _CAUSAL:
        i = mx.arange(t)
        _CAUSAL[key] = mx.where(i[:, None] >= i[None, :], 0.0, -1e9).astype(dtype)
    return _CAUSAL[key]


_COMPILED: dict = {}


def _exp_minus(x, m):
    """exp(x - m) as one fused kernel (also when the step itself is not compiled)."""
    import mlx.core as mx

    if "exp_minus" not in _COMPILED:
        _COMPILED["exp_minus"] = mx.compile(lambda a, b: mx.exp(a - b))
    return _COMPILED["exp_minus"](x, m)


ATTN_BLOCK = 128  # query rows per block: blocks skip the keys the causal mask hides


def cpu_attention(queries, keys, values, cache=None, scale: float = 1.0, mask=None, sinks=None):
    """Drop-in for mlx-lm's scaled_dot_product_attention during CPU training (no KV cache).

    mx.fast's CPU fallback materializes the full T x T scores and runs the unvectorized
    softmax primitive (~70 Melem/s here). Instead: query blocks of ATTN_BLOCK rows only see
    keys up to their end (the causal mask hides the rest: ~40% fewer scores at T=512), exp is one
    fused vectorized kernel, and the softmax division happens after the PV matmul on the small
    (rows x head_dim) output instead of on the scores. GQA folds each kv group's query heads
    into the row axis (no repeated K/V). fwd+bwd per layer at T=512: 70 -> 47 ms (one thread).
    """
    import mlx.core as mx

    if cache is not None or sinks is not None or not (mask is None or isinstance(mask, str)):
        from mlx_lm.models.base import scaled_dot_product_attention

        return scaled_dot_product_attention(
            queries, keys, values, cache=cache, scale=scale, mask=mask, sinks=sinks
        )
    b, hq, t, d = queries.shape
    hk = keys.shape[1]
    rep = hq // hk
    causal = mask == "causal"
    q = queries * scale
    outs = []
    for start in range(0, t, ATTN_BLOCK if causal else t):
        end = min(t, start + ATTN_BLOCK) if causal else t
        tb, seen = end - start, (end if causal else keys.shape[2])
        qb = q[:, :, start:end].reshape(b, hk, rep * tb, d)
        kb, vb = keys[:, :, :seen], values[:, :, :seen]
        scores = (qb @ kb.swapaxes(-1, -2)).reshape(b, hk, rep, tb, seen)
        if causal:
            scores = scores + _causal_bias(t, scores.dtype)[start:end, :seen]
        m = mx.stop_gradient(mx.max(scores, axis=-1, keepdims=True))
        e = _exp_minus(scores, m)
        den = mx.sum(e, axis=-1, keepdims=True)
        o = (e.reshape(b, hk, rep * tb, seen) @ vb).reshape(b, hk, rep, tb, d) / den
        outs.append(o.reshape(b, hq, tb, d))
    return outs[0] if len(outs) == 1 else mx.concatenate(outs, axis=2)


@contextlib.contextmanager
def patched_attention(model, enable: bool) -> Iterator[bool]:
    """Swap the model modules' `scaled_dot_product_attention` and `swiglu` for the CPU versions (restored after)."""
    if not enable:
        yield False
        return
    mods = {sys.modules.get(type(m).__module__) for _, m in model.named_modules()}
    swiglu = _make_swiglu()
    saved = []
    for mod in mods:
        if mod is None:
            continue
        if callable(getattr(mod, "scaled_dot_product_attention", None)):
            saved.append((mod, "scaled_dot_product_attention", mod.scaled_dot_product_attention))
            mod.scaled_dot_product_attention = cpu_attention
        if callable(getattr(mod, "swiglu", None)):
            saved.append((mod, "swiglu", mod.swiglu))
            mod.swiglu = swiglu
    try:
        yield bool(saved)
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)


def _make_swiglu():
    """silu(gate) * x with a hand-written vjp: both directions are one fused, vectorized kernel.

    mlx-lm's swiglu is a shapeless mx.compile; its autodiff evaluates an unfused, scalar
    sigmoid (~7% of a CPU training profile)."""
    import mlx.core as mx

    def sig(g):
        return 1.0 / (1.0 + mx.exp(-g))

    # Plain functions: the compiled training step fuses them (an mx.compile object captured in
    # a custom_function aborts the interpreter at exit: "Resource deadlock avoided").
    def fwd(g, x):
        return g * sig(g) * x

    def bwd(g, x, cot):
        s = sig(g)
        return cot * x * s * (1.0 + g * (1.0 - s)), cot * g * s

    @mx.custom_function
    def swiglu(gate, x):
        return fwd(gate, x)

    @swiglu.vjp
    def swiglu_vjp(primals, cotangent, output):  # noqa: ARG001
        gate, x = primals
        return bwd(gate, x, cotangent)

    return swiglu


def _make_cross_entropy():
    """Per-row cross-entropy with one exp pass; the backward reuses the forward's probabilities."""
    import mlx.core as mx

    @mx.custom_function
    def ce(logits, targets):
        m = mx.max(logits, axis=-1, keepdims=True)
        e = _exp_minus(logits, m)
        s = mx.sum(e, axis=-1, keepdims=True)
        picked = mx.take_along_axis(logits, targets[:, None], axis=-1)
        loss = (m + mx.log(s) - picked).squeeze(-1)
        return loss, mx.stop_gradient(e / s)

    @ce.vjp
    def ce_vjp(primals, cotangents, outputs):
        _, targets = primals
        cot = cotangents[0][:, None]
        grad = outputs[1] * cot
        at = mx.take_along_axis(grad, targets[:, None], axis=-1)
        grad = mx.put_along_axis(grad, targets[:, None], at - cot, axis=-1)
        return grad, mx.zeros_like(targets)

    return lambda logits, targets: ce(logits, targets)[0]


# --------------------------------------------------------------------------- checkpoints


def fingerprint(settings: TrainSettings, data_files: Sequence[Path], model_dir: Path) -> str:
    """Hash of what determines the training trajectory: settings, data, base model, mlx versions."""
    from importlib import metadata

    h = hashlib.sha256()
    relevant = {k: v for k, v in settings.to_dict().items() if k not in _NOT_FINGERPRINTED}
    h.update(json.dumps(relevant, sort_keys=True).encode())
    for pkg in ("mlx", "mlx-lm"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            h.update(f"{pkg}={metadata.version(pkg)}".encode())
    for f in data_files:
        h.update((_file_digest(Path(f)) if Path(f).is_file() else "missing").encode())
    model_dir = Path(model_dir)
    weights = sorted(model_dir.glob("*.safetensors"))
    small = sum(p.stat().st_size for p in weights) <= 2 * 1024**3
    for p in [model_dir / "config.json", *weights]:
        if not p.is_file():
            continue
        if p.suffix == ".json" or small:
            h.update(_file_digest(p).encode())
        else:  # big models: size + mtime, not 10+ GB of hashing
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _save_checkpoint(resume_dir: Path, model, optimizer, state: dict) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    with atomic_dir(resume_dir / CHECKPOINT) as tmp:
        mx.save_safetensors(
            str(tmp / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters()))
        )
        mx.save_safetensors(str(tmp / "optimizer.safetensors"), dict(tree_flatten(optimizer.state)))
        (tmp / "state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")


def _load_checkpoint(resume_dir: Path, expect_fp: str) -> dict | None:
    ckpt = resume_dir / CHECKPOINT
    try:
        state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if state.get("fingerprint") != expect_fp:
        log.info(
            "resume: checkpoint in %s is for another run (fingerprint %s, now %s: settings, data or "
            "base model changed); starting fresh",
            resume_dir,
            state.get("fingerprint"),
            expect_fp,
        )
        shutil.rmtree(ckpt, ignore_errors=True)
        return None
    return state


def _restore(resume_dir: Path, model, optimizer) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten

    ckpt = resume_dir / CHECKPOINT
    model.load_weights(list(mx.load(str(ckpt / "adapters.safetensors")).items()), strict=False)
    optimizer.init(model.trainable_parameters())
    saved = mx.load(str(ckpt / "optimizer.safetensors"))
    current = dict(tree_flatten(optimizer.state))
    current.update(saved)
    optimizer.state = tree_unflatten(list(current.items()))


@contextlib.contextmanager
def _restored(obj, name: str, value) -> Iterator[None]:
    """Put `obj.name = value` back on exit (mlx-lm's grad_checkpoint patches the layer class)."""
    try:
        yield
    finally:
        setattr(obj, name, value)


class _SignalCatcher:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each step (handlers restored on exit)."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):  # noqa: ARG002
        if self.signum is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("signal %d: saving a checkpoint after this step, then stopping", signum)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


# --------------------------------------------------------------------------- training


def _fmt_s(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _write_loss_csv(path: Path, rows: list[dict]) -> None:
    with atomic_open(path, "w") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOSS_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _adapter_config(settings: TrainSettings, keys: list[str] | None, model_dir: Path, n_layers: int) -> dict:
    lora = {"rank": settings.rank, "scale": settings.scale, "dropout": settings.dropout}
    if keys:
        lora["keys"] = keys
    return {
        "model": str(model_dir),
        "fine_tune_type": settings.fine_tune_type,
        "num_layers": n_layers,
        "lora_parameters": lora,
        "mask_prompt": settings.mask_prompt,
        "max_seq_length": settings.max_seq_length,
        "blogtune_settings": settings.to_dict(),
    }


def _n_streams(threads: int, batch_size: int) -> int:
    """MLX CPU streams to split a batch over: 1 (measured fastest, see the module doc);
    BLOGTUNE_MLX_STREAMS overrides it for benchmarks."""
    wanted = int(os.environ.get("BLOGTUNE_MLX_STREAMS", "1"))
    return max(1, min(wanted, threads, batch_size))


def _load_model(model_dir: Path, settings: TrainSettings):
    """mlx-lm model + tokenizer + config, in float32 on CPU, after the memory preflight."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm import load

    model, tokenizer, config = load(
        str(model_dir), model_config=rope_overrides(model_dir), return_config=True
    )
    cpu = _on_cpu()
    quant = config.get("quantization") or config.get("quantization_config")
    dtypes = {v.dtype for _, v in tree_flatten(model.parameters())}
    if cpu and quant:
        log.warning("quantized base model on CPU: quantized matmuls are 10-20x slower here; use float32")
    elif cpu and (mx.bfloat16 in dtypes or mx.float16 in dtypes):
        log.info("casting half-precision weights to float32: CPU half matmuls bypass BLAS (10x slower)")
        model.set_dtype(mx.float32)
    if isinstance(quant, dict):
        bits = int(quant.get("bits", 4))
    else:
        bits = 32 if cpu or mx.float32 in dtypes else 16
    est = estimate_memory(config, bits, settings)
    avail = available_memory_bytes()
    log.info("memory estimate: %s; available %.1f GB", est.describe(), avail / 1024**3)
    check_fits(est, avail)
    return model, tokenizer, cpu


def _load_data(data_dir: Path, tokenizer, settings: TrainSettings) -> tuple[Encoded, Encoded]:
    log.info("tokenizing %s", data_dir)
    train_set = encode_split(
        data_dir / "train.jsonl", tokenizer, settings.mask_prompt, settings.max_seq_length
    )
    valid_set = encode_split(
        data_dir / "valid.jsonl", tokenizer, settings.mask_prompt, settings.max_seq_length
    )
    if len(train_set) == 0:
        raise ValueError(f"no training samples in {data_dir / 'train.jsonl'}")
    for name, ds in (("train", train_set), ("valid", valid_set)):
        if ds.n_truncated:
            log.warning(
                "%s: %d of %d samples exceed max_seq_length=%d tokens (longest %d) and are truncated",
                name,
                ds.n_truncated,
                len(ds),
                settings.max_seq_length,
                ds.longest,
            )
    lens = np.array(train_set.lengths)
    log.info(
        "data: %d train / %d valid samples; tokens/sample median %d, max %d; %d scored train tokens per epoch",
        len(train_set),
        len(valid_set),
        int(np.median(lens)),
        int(lens.max()),
        sum(len(t) - s for t, s in zip(train_set.tokens, train_set.starts, strict=True)),
    )
    return train_set, valid_set


def _apply_fine_tune(model, settings: TrainSettings) -> tuple[int, list[str] | None]:
    """Freeze the model, then add LoRA/DoRA layers (or unfreeze blocks) on the top num_layers blocks."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers

    mx.random.seed(settings.seed)  # LoRA A matrices are random: seeded like mlx-lm
    model.freeze()
    total = len(model.layers)
    if settings.num_layers > total:
        raise ValueError(f"train.num_layers={settings.num_layers} but the model has {total} layers")
    n_layers = total if settings.num_layers == -1 else settings.num_layers
    keys = resolve_keys(model, settings.keys)
    if settings.fine_tune_type == "full":
        for layer in model.layers[-n_layers:]:
            layer.unfreeze()
    else:
        cfg = {"rank": settings.rank, "scale": settings.scale, "dropout": settings.dropout}
        if keys:
            cfg["keys"] = keys
        linear_to_lora_layers(model, n_layers, cfg, use_dora=settings.fine_tune_type == "dora")
    n_train = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    n_all = sum(v.size for _, v in tree_flatten(model.parameters()))
    log.info(
        "%s on %d/%d layers: %.2fM of %.1fM parameters trainable (%.2f%%)",
        settings.fine_tune_type,
        n_layers,
        total,
        n_train / 1e6,
        n_all / 1e6,
        100 * n_train / max(n_all, 1),
    )
    return n_layers, keys


def _split_body(model, n_frozen: int) -> tuple[Callable, Callable, Callable] | None:
    """(prefix, suffix, head) with head(suffix(prefix(x))) == model(x), checked numerically.

    prefix = embeddings + the frozen blocks below the trained ones; its output per sample never
    changes, so it is computed once and cached. None when the model is not built that way.
    """
    import mlx.core as mx

    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "embed_tokens"):
        return None
    if hasattr(model, "lm_head"):
        head = lambda h: model.lm_head(h)  # noqa: E731
    elif hasattr(inner.embed_tokens, "as_linear"):
        head = lambda h: inner.embed_tokens.as_linear(h)  # noqa: E731
    else:
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


class _Runner:
    """The compiled train/eval steps, the frozen-prefix cache and the streams a batch is split over."""

    def __init__(self, model, optimizer, settings: TrainSettings, n_layers: int, streams: list):
        import mlx.core as mx
        import mlx.nn as nn
        from mlx.utils import tree_map

        self.mx, self.model, self.settings, self.streams = mx, model, settings, streams
        n_frozen = len(model.layers) - n_layers
        self.split = _split_body(model, n_frozen)
        self.cache: dict[tuple[str, int], Any] = {}
        self.pending: list = []  # new cache entries, evaluated with the step that made them
        self.cache_bytes, self.cache_limit = 0, 0
        if self.split is not None and n_frozen > 0 and PREFIX_CACHE:
            # Hidden states cost tokens x hidden x 4 bytes; keep them while that stays modest.
            self.cache_limit = int(min(2 * 1024**3, 0.15 * available_memory_bytes()))
        ce = _make_cross_entropy()
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

        def loss_fn(model, parts):
            total, ntok = None, None
            for part, stream in zip(parts, streams, strict=False):
                with mx.stream(stream):
                    s = micro_loss(model, *part)
                    n = part[3].sum()
                total = s if total is None else total + s
                ntok = n if ntok is None else ntok + n
            return total / mx.maximum(ntok, 1.0), ntok

        value_and_grad = nn.value_and_grad(model, loss_fn)
        self.state = [model.state, optimizer.state, mx.random.state]
        accum = settings.grad_accumulation

        def train_step(parts, prev_grad, do_update: bool):
            (loss, ntok), grad = value_and_grad(model, parts)
            if prev_grad is not None:
                grad = tree_map(lambda a, b: a + b, grad, prev_grad)
            if do_update:
                if accum > 1:
                    grad = tree_map(lambda g: g / accum, grad)
                optimizer.update(model, grad)
                grad = None
            return loss, ntok, grad

        def eval_step(parts):
            return loss_fn(model, parts)

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

    def _inputs(self, data: Encoded, split_name: str, parts: list) -> list:
        """Model inputs per micro-batch: token ids, or frozen-prefix hidden states (cached per sample)."""
        mx = self.mx
        out = []
        for part, stream in zip(parts, self.streams, strict=False):
            inputs, rows, targets, weights, ids = part
            arrays = (mx.array(rows), mx.array(targets), mx.array(weights))
            if self.split is None:
                out.append((mx.array(inputs), *arrays))
                continue
            keys = [(split_name, int(i)) for i in ids]
            if all(k in self.cache for k in keys):
                t = inputs.shape[1]
                with mx.stream(stream):
                    h = mx.stack(
                        [mx.pad(self.cache[k], [(0, t - self.cache[k].shape[0]), (0, 0)]) for k in keys]
                    )
            else:
                with mx.stream(stream):
                    h = self._prefix(mx.array(inputs))
                self._remember(keys, data, ids, h)
            out.append((mx.stop_gradient(h), *arrays))
        return out

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
        parts = self._inputs(data, "train", collate(data, idx, len(self.streams)))
        # Dropout randomness is a function of (seed, step): a resumed run replays it.
        mx.random.seed(self.settings.seed * 1_000_003 + step)
        do_update = step % self.settings.grad_accumulation == 0
        loss, ntok, self.grad_accum = self._train_step(parts, self.grad_accum, do_update)
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
            loss, ntok = self._eval_step(self._inputs(data, "valid", collate(data, idx, len(self.streams))))
            mx.eval(loss, ntok, self.pending)
            self.pending = []
            tot += loss.item() * ntok.item()
            n += ntok.item()
        self.model.train()
        return tot / max(n, 1.0)


@dataclass
class _Log:
    """Loss rows (the CSV), report windows and the numbers the summary needs."""

    iters: int
    rows: list[dict] = field(default_factory=list)
    trained_tokens: int = 0
    elapsed_before: float = 0.0
    t0: float = field(default_factory=time.perf_counter)
    window: list[tuple[int, float, float]] = field(default_factory=list)
    step_stats: list[tuple[int, float, float]] = field(default_factory=list)
    last_train: float | None = None
    last_valid: float | None = None

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t0

    def step(self, n: int, dt: float, loss: float) -> None:
        self.trained_tokens += n
        self.window.append((n, dt, loss))
        self.step_stats.append((n, dt, loss))

    def train_row(self, step: int, lr: float, peak_gb: float) -> None:
        toks = sum(w[0] for w in self.window)
        secs = sum(w[1] for w in self.window)
        self.last_train = sum(w[0] * w[2] for w in self.window) / max(toks, 1)
        tps = toks / max(secs, 1e-9)
        self.window = []
        self._row(step, "train", self.last_train, f"{lr:.3e}", round(tps, 1), peak_gb)
        train_time = sum(s[1] for s in self.step_stats)
        eta = (self.iters - step) * train_time / max(len(self.step_stats), 1)
        log.info(
            "step %d/%d (%d%%) | train loss %.4f | lr %.2e | %.0f tok/s | %.1fk tokens | peak %.2f GB | ETA %s",
            step,
            self.iters,
            100 * step // self.iters,
            self.last_train,
            lr,
            tps,
            self.trained_tokens / 1000,
            peak_gb,
            _fmt_s(eta),
        )

    def valid_row(self, step: int, loss: float | None, seconds: float, peak_gb: float) -> None:
        if loss is None:
            return
        self.last_valid = loss
        self._row(step, "valid", loss, "", "", peak_gb)
        log.info("step %d/%d | valid loss %.4f (%.1fs)", step, self.iters, loss, seconds)

    def _row(self, step, split, loss, lr, tps, peak_gb) -> None:
        self.rows.append(
            dict(
                step=step,
                split=split,
                loss=round(loss, 6),
                learning_rate=lr,
                tokens_per_second=tps,
                trained_tokens=self.trained_tokens,
                peak_memory_gb=round(peak_gb, 3),
                elapsed_s=round(self.elapsed(), 2),
            )
        )

    def first(self, split: str, step: int | None = None) -> float | None:
        for r in self.rows:
            if r["split"] == split and (step is None or int(r["step"]) == step):
                return float(r["loss"])
        return None

    def last(self, split: str) -> float | None:
        return next((float(r["loss"]) for r in reversed(self.rows) if r["split"] == split), None)


def train(
    model_dir: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    settings: TrainSettings,
    loss_csv: str | Path | None = None,
    resume_dir: str | Path | None = None,
    threads: int | None = None,
    progress: bool | None = None,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Fine-tune `model_dir` (an MLX model folder) on data_dir/{train,valid}.jsonl; adapters -> out_dir.

    resume_dir (outside out_dir): checkpoints for resume; deleted after success. threads: cores to
    use (default: all available to this process). progress: a tqdm bar on stderr (default: if a
    TTY). on_step(step) is called after each step (tests use it to send signals).
    """
    from blogtune import blas

    blas.setup_mlx_cpu(threads)  # no-op if done already / not on Linux CPU; must precede mlx import
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.trainer import grad_checkpoint

    t_start = time.perf_counter()
    settings.validate()
    model_dir, data_dir, out_dir = Path(model_dir), Path(data_dir), Path(out_dir)
    resume_dir = Path(resume_dir) if resume_dir else None
    threads = threads or blas.available_cores()

    model, tokenizer, cpu = _load_model(model_dir, settings)
    train_set, valid_set = _load_data(data_dir, tokenizer, settings)
    batch_size = min(settings.batch_size, len(train_set))
    if batch_size < settings.batch_size:
        log.warning(
            "only %d training samples: batch_size %d -> %d", len(train_set), settings.batch_size, batch_size
        )
    iters = iters_for(settings, len(train_set))
    per_epoch = math.ceil(len(train_set) / batch_size)
    total_updates = max(1, iters // settings.grad_accumulation)
    log.info(
        "%d steps (%.2f epochs of %d batches of %d), %d optimizer updates",
        iters,
        iters / per_epoch,
        per_epoch,
        batch_size,
        total_updates,
    )
    n_layers, keys = _apply_fine_tune(model, settings)
    layer_cls, layer_call = type(model.layers[0]), type(model.layers[0]).__call__
    if settings.grad_checkpoint:
        grad_checkpoint(model.layers[0])  # patches the class; restored when training ends
    optimizer = _make_optimizer(settings, total_updates)
    n_streams = _n_streams(threads, batch_size) if cpu else 1
    if cpu:
        # MLX runs each stream's ops on its own thread: the BLAS threads are shared between them.
        blas.set_blas_threads(max(1, threads // n_streams))
    if n_streams > 1:
        streams = [mx.new_stream(mx.cpu) for _ in range(n_streams)]
    else:
        streams = [mx.default_stream(mx.default_device())]

    fp = (
        fingerprint(settings, [data_dir / "train.jsonl", data_dir / "valid.jsonl"], model_dir)
        if resume_dir
        else ""
    )
    book = _Log(iters)
    start_step = 0
    if resume_dir is not None:
        state = _load_checkpoint(resume_dir, fp)
        if state is not None:
            _restore(resume_dir, model, optimizer)
            start_step = int(state["step"])
            book.rows, book.trained_tokens = state["loss_rows"], int(state["trained_tokens"])
            book.elapsed_before = float(state["elapsed_s"])
            log.info("resuming from step %d/%d (checkpoint in %s)", start_step, iters, resume_dir)
    else:
        log.info("no resume_dir: an interrupted run will start over")

    def ckpt_state(step: int) -> dict:
        return dict(
            fingerprint=fp,
            step=step,
            iters=iters,
            trained_tokens=book.trained_tokens,
            elapsed_s=round(book.elapsed(), 2),
            loss_rows=book.rows,
            settings=settings.to_dict(),
        )

    with patched_attention(model, enable=cpu) as patched, _restored(layer_cls, "__call__", layer_call):
        runner = _Runner(model, optimizer, settings, n_layers, streams)
        log.info(
            "%s path: %d stream(s) x %s BLAS thread(s); attention %s; %s",
            "CPU" if cpu else "GPU",
            n_streams,
            blas.blas_report()["blas_threads"] or "-",
            "blocked matmul + fused exp" if patched else "mx.fast",
            runner.describe(),
        )
        val_plan = eval_batches(valid_set.lengths, batch_size, settings.val_batches, settings.seed)

        def validate(step: int) -> None:
            tic = time.perf_counter()
            loss = runner.evaluate(valid_set, val_plan if len(valid_set) else [])
            book.valid_row(step, loss, time.perf_counter() - tic, mx.get_peak_memory() / 1e9)

        if start_step == 0:
            mx.reset_peak_memory()
            validate(0)
        model.train()
        bar = _progress_bar(progress, iters, start_step)
        plans: dict[int, list[list[int]]] = {}
        with _SignalCatcher() as sig:
            for step in range(start_step + 1, iters + 1):
                if sig.signum is not None:  # arrived before this step started
                    raise _interrupt(
                        resume_dir, model, optimizer, ckpt_state(step - 1), sig.signum, step - 1, bar
                    )
                epoch, pos = divmod(step - 1, per_epoch)
                if epoch not in plans:
                    plans = {epoch: plan_batches(train_set.lengths, batch_size, settings.seed, epoch)}
                tic = time.perf_counter()
                loss, ntok = runner.train_step(train_set, plans[epoch][pos], step)
                dt, n = time.perf_counter() - tic, int(ntok.item())
                book.step(n, dt, float(loss.item()))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{n / dt:.0f}")
                if step % settings.steps_per_report == 0 or step == iters:
                    book.train_row(step, float(optimizer.learning_rate.item()), mx.get_peak_memory() / 1e9)
                if step % settings.steps_per_eval == 0 or step == iters:
                    validate(step)
                if on_step is not None:
                    on_step(step)
                if sig.signum is not None:
                    raise _interrupt(resume_dir, model, optimizer, ckpt_state(step), sig.signum, step, bar)
                if resume_dir is not None and step % settings.save_every == 0 and step < iters:
                    _save_checkpoint(resume_dir, model, optimizer, ckpt_state(step))
                    log.info("checkpoint: step %d -> %s", step, resume_dir)
        if bar is not None:
            bar.close()

    with atomic_dir(out_dir) as tmp:
        mx.save_safetensors(
            str(tmp / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters()))
        )
        atomic_write_json(tmp / "adapter_config.json", _adapter_config(settings, keys, model_dir, n_layers))
    if loss_csv is not None:
        _write_loss_csv(Path(loss_csv), book.rows)
    if resume_dir is not None:
        shutil.rmtree(resume_dir, ignore_errors=True)
    train_time = sum(s[1] for s in book.step_stats)
    result = TrainResult(
        adapter_dir=out_dir,
        iters=iters,
        final_train_loss=book.last("train"),
        final_valid_loss=book.last("valid"),
        base_valid_loss=book.first("valid", 0),
        tokens_per_second=round(sum(s[0] for s in book.step_stats) / max(train_time, 1e-9), 1),
        trained_tokens=book.trained_tokens,
        peak_memory_gb=round(mx.get_peak_memory() / 1e9, 3),
        train_seconds=round(train_time, 2),
        total_seconds=round(time.perf_counter() - t_start, 2),
        samples_over_max_seq_length={"train": train_set.n_truncated, "valid": valid_set.n_truncated},
        resumed_from_step=start_step,
        n_train=len(train_set),
        n_valid=len(valid_set),
        step_stats=book.step_stats,
    )
    log.info(
        "done: %d steps, train loss %s, valid loss %s (base %s), %.0f tok/s, %s",
        iters,
        _fmt_loss(result.final_train_loss),
        _fmt_loss(result.final_valid_loss),
        _fmt_loss(result.base_valid_loss),
        result.tokens_per_second,
        _fmt_s(result.total_seconds),
    )
    return result


def _progress_bar(progress: bool | None, iters: int, start: int):
    if not (progress if progress is not None else sys.stderr.isatty()):
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=iters, initial=start, desc="train", unit="step", leave=False)


def _fmt_loss(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _interrupt(resume_dir, model, optimizer, state: dict, signum: int, step: int, bar) -> TrainingInterrupted:
    if bar is not None:
        bar.close()
    if resume_dir is not None and step > 0:
        _save_checkpoint(Path(resume_dir), model, optimizer, state)
        log.warning("checkpoint at step %d saved to %s; rerun to resume", step, resume_dir)
    return TrainingInterrupted(signum, step)


def load_settings_json(path: str | Path) -> TrainSettings:
    return TrainSettings.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


__all__ = [
    "MemoryError_",
    "MemoryEstimate",
    "TrainResult",
    "TrainSettings",
    "TrainingInterrupted",
    "available_memory_bytes",
    "check_fits",
    "collate",
    "encode_split",
    "estimate_memory",
    "fingerprint",
    "iters_for",
    "plan_batches",
    "train",
]
