"""Per-architecture knowledge: hyperparameter keys, tensor names and weight transforms.

Each HF `model_type` we can export maps to an `ArchSpec`. The GGUF side follows llama.cpp's
converter conventions (see shared/notes/gguf-and-ollama.md §1): arch `llama` needs the q/k
row permutation, Gemma stores RMSNorm weights as `1 + w`, Phi-3 keeps fused qkv / gate_up.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gguf
import numpy as np

log = logging.getLogger(__name__)


class ExportError(ValueError):
    """A model folder that cannot be exported; the message says why and what to do."""


class UnsupportedArchitectureError(ExportError):
    """The model_type has no GGUF recipe here."""


# Tensors that exist in HF checkpoints but have no place in a GGUF file.
_IGNORED = re.compile(r"(rotary_emb\.inv_freq|attention\.masked_bias|attention\.bias)$")
# Multimodal wrappers (Gemma 3 4B+): only the text tower is exported.
_SKIPPED_PREFIXES = (
    "vision_tower.",
    "multi_modal_projector.",
    "model.vision_tower.",
    "model.multi_modal_projector.",
)
_TEXT_PREFIXES = ("language_model.model.", "model.language_model.", "language_model.")


@dataclass(frozen=True)
class ArchSpec:
    gguf_arch: gguf.MODEL_ARCH
    write_hparams: Callable[[dict, gguf.GGUFWriter], None]
    permute_qk: bool = False  # llama.cpp's `llama` arch uses interleaved (Meta) RoPE rows
    norm_plus_one: bool = False  # Gemma RMSNorm computes x * (1 + w)
    has_output: bool = True  # gemma2 has no separate output tensor at all
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.gguf_arch]


# ---------------------------------------------------------------------------------------------
# config helpers


def text_config(config: dict) -> dict:
    """The language-model part of a config (multimodal configs nest it under text_config)."""
    inner = config.get("text_config")
    if isinstance(inner, dict) and config.get("model_type") in {"gemma3", "mistral3", "llava"}:
        merged = {**config, **inner}
        merged["model_type"] = inner.get("model_type", config["model_type"])
        return merged
    return config


def rope_settings(config: dict, layer_type: str = "full_attention") -> dict:
    """rope_theta, rope_type and scaling fields, from new (rope_parameters) or old style keys.

    transformers 5 writes `rope_parameters`, sometimes one dict per layer type (Gemma 3);
    older configs have `rope_theta` plus `rope_scaling`.
    """
    params = config.get("rope_parameters")
    if isinstance(params, dict) and layer_type in params and isinstance(params[layer_type], dict):
        params = params[layer_type]
    merged: dict[str, Any] = {}
    if isinstance(config.get("rope_scaling"), dict):
        merged.update(config["rope_scaling"])
    if isinstance(params, dict):
        merged.update(params)
    if "rope_theta" not in merged and config.get("rope_theta") is not None:
        merged["rope_theta"] = config["rope_theta"]
    rope_type = merged.get("rope_type") or merged.get("type") or "default"
    merged["rope_type"] = rope_type
    return merged


def head_dim(config: dict) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def _generic(config: dict, w: gguf.GGUFWriter, *, context_default: int | None = None) -> None:
    ctx = config.get("max_position_embeddings") or context_default
    if ctx:
        w.add_context_length(int(ctx))
    w.add_embedding_length(int(config["hidden_size"]))
    w.add_block_count(int(config["num_hidden_layers"]))
    w.add_feed_forward_length(int(config["intermediate_size"]))
    w.add_head_count(int(config["num_attention_heads"]))
    w.add_head_count_kv(int(config.get("num_key_value_heads") or config["num_attention_heads"]))
    w.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))


def _rope_theta(config: dict, w: gguf.GGUFWriter, layer_type: str = "full_attention") -> None:
    theta = rope_settings(config, layer_type).get("rope_theta")
    if theta is not None:
        w.add_rope_freq_base(float(theta))


def _rope_scaling(config: dict, w: gguf.GGUFWriter) -> None:
    """Linear and YaRN scaling have plain KVs; llama3 scaling becomes a rope_freqs tensor."""
    rope = rope_settings(config)
    kind = rope["rope_type"]
    factor = rope.get("factor")
    if kind == "linear" and factor:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(factor))
    elif kind == "yarn" and factor:
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(factor))
        if rope.get("original_max_position_embeddings"):
            w.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))


def _head_lengths(config: dict, w: gguf.GGUFWriter) -> None:
    if config.get("head_dim"):
        w.add_key_length(int(config["head_dim"]))
        w.add_value_length(int(config["head_dim"]))


def _llama_hparams(config: dict, w: gguf.GGUFWriter) -> None:
    _generic(config, w)
    _rope_theta(config, w)
    _rope_scaling(config, w)
    w.add_rope_dimension_count(head_dim(config))
    w.add_vocab_size(int(config["vocab_size"]))
    # Mistral-Nemo style head_dim != hidden/heads needs explicit lengths
    if (
        config.get("head_dim")
        and int(config["head_dim"]) != config["hidden_size"] // config["num_attention_heads"]
    ):
        _head_lengths(config, w)


def _qwen2_hparams(config: dict, w: gguf.GGUFWriter) -> None:
    _generic(config, w)
    _rope_theta(config, w)
    _rope_scaling(config, w)


def _qwen3_hparams(config: dict, w: gguf.GGUFWriter) -> None:
    _qwen2_hparams(config, w)
    _head_lengths(config, w)


def _gemma2_hparams(config: dict, w: gguf.GGUFWriter) -> None:
    _generic(config, w)
    hd = head_dim(config)
    w.add_key_length(hd)
    w.add_value_length(hd)
    if config.get("attn_logit_softcapping") is not None:
        w.add_attn_logit_softcapping(float(config["attn_logit_softcapping"]))
    if config.get("final_logit_softcapping") is not None:
        w.add_final_logit_softcapping(float(config["final_logit_softcapping"]))
    if config.get("sliding_window"):
        w.add_sliding_window(int(config["sliding_window"]))


def _gemma3_hparams(config: dict, w: gguf.GGUFWriter) -> None:
    _generic(config, w, context_default=131072)
    hd = head_dim(config)
    w.add_key_length(hd)
    w.add_value_length(hd)
    _rope_theta(config, w, "full_attention")
    local = rope_settings(config, "sliding_attention").get("rope_theta") or config.get("rope_local_base_freq")
    if local is not None:
        w.add_rope_freq_base_swa(float(local))
    _rope_scaling(config, w)
    if (
        config.get("sliding_window")
        and config.get("sliding_window_pattern", config.get("_sliding_window_pattern")) != 1
    ):
        w.add_sliding_window(int(config["sliding_window"]))
    if config.get("final_logit_softcapping") is not None:
        w.add_final_logit_softcapping(float(config["final_logit_softcapping"]))


def _phi3_hparams(config: dict, w: gguf.GGUFWriter) -> None:
    _generic(config, w)
    rope = rope_settings(config)
    orig = config.get("original_max_position_embeddings") or config.get("max_position_embeddings")
    w.add_rope_scaling_orig_ctx_len(int(orig))
    partial = float(rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)))
    w.add_rope_dimension_count(int(partial * config["hidden_size"]) // config["num_attention_heads"])
    _rope_theta(config, w)
    w.add_sliding_window(int(config.get("sliding_window") or 0))  # 0 = no sliding window
    if rope["rope_type"] == "longrope":
        scale = config["max_position_embeddings"] / orig
        attn_factor = 1.0 if scale <= 1.0 else math.sqrt(1 + math.log(scale) / math.log(orig))
        w.add_rope_scaling_attn_factors(attn_factor)


ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": ArchSpec(gguf.MODEL_ARCH.LLAMA, _llama_hparams, permute_qk=True),
    # llama.cpp has no separate `mistral` arch: Mistral/Mixtral checkpoints are written as llama
    "mistral": ArchSpec(gguf.MODEL_ARCH.LLAMA, _llama_hparams, permute_qk=True),
    "qwen2": ArchSpec(gguf.MODEL_ARCH.QWEN2, _qwen2_hparams),
    "qwen3": ArchSpec(gguf.MODEL_ARCH.QWEN3, _qwen3_hparams),
    "gemma2": ArchSpec(gguf.MODEL_ARCH.GEMMA2, _gemma2_hparams, norm_plus_one=True, has_output=False),
    "gemma3_text": ArchSpec(gguf.MODEL_ARCH.GEMMA3, _gemma3_hparams, norm_plus_one=True),
    "gemma3": ArchSpec(gguf.MODEL_ARCH.GEMMA3, _gemma3_hparams, norm_plus_one=True),
    "phi3": ArchSpec(gguf.MODEL_ARCH.PHI3, _phi3_hparams),
}
SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(sorted(ARCHITECTURES))


def check_exportable(config: dict) -> str:
    """The GGUF arch for an HF config, or UnsupportedArchitectureError naming what is supported.

    Cheap and file-free, so the workflow can call it before training starts.
    """
    model_type = text_config(config).get("model_type") or config.get("model_type")
    spec = ARCHITECTURES.get(str(model_type))
    if spec is None:
        raise UnsupportedArchitectureError(
            f"GGUF export does not support model_type {model_type!r}; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}. "
            "Pick a base model of a supported family, or skip the GGUF/Ollama stages."
        )
    cfg = text_config(config)
    if cfg.get("num_local_experts") or cfg.get("num_experts"):
        raise UnsupportedArchitectureError(
            f"GGUF export does not support mixture-of-experts checkpoints (model_type {model_type!r}); "
            f"supported dense families: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    rope_type = rope_settings(cfg)["rope_type"]
    allowed_rope = {"default", "linear", "yarn", "llama3"} | ({"longrope"} if spec.name == "phi3" else set())
    if rope_type not in allowed_rope:
        raise UnsupportedArchitectureError(
            f"GGUF export of model_type {model_type!r} does not support rope type {rope_type!r} "
            f"(supported: {', '.join(sorted(allowed_rope))})"
        )
    return spec.name


def spec_for(config: dict) -> ArchSpec:
    check_exportable(config)
    return ARCHITECTURES[str(text_config(config)["model_type"])]


# ---------------------------------------------------------------------------------------------
# tensor names and transforms


@dataclass(frozen=True)
class TensorPlan:
    """One output tensor: its GGUF name, the HF tensor it comes from, and how to transform it."""

    gguf_name: str
    hf_name: str | None  # None for generated tensors (rope_freqs)
    shape: tuple[int, ...]  # HF order ([out, in]); GGUF reverses it on write
    transform: str | None = None  # "permute_q", "permute_k", "plus_one"
    generated: np.ndarray | None = field(default=None, compare=False, repr=False)


def strip_text_prefix(hf_name: str) -> str | None:
    """Normalise multimodal names to plain `model.…`; None for tensors of other towers."""
    if hf_name.startswith(_SKIPPED_PREFIXES):
        return None
    for prefix in _TEXT_PREFIXES:
        if hf_name.startswith(prefix):
            rest = hf_name[len(prefix) :]
            return rest if rest.startswith("lm_head") else f"model.{rest}"
    return hf_name


def allowed_names(arch: gguf.MODEL_ARCH, n_layers: int) -> set[str]:
    names = set()
    for t in gguf.MODEL_TENSORS[arch]:
        template = gguf.TENSOR_NAMES[t]
        if "{bid}" in template:
            names.update(template.format(bid=b) for b in range(n_layers))
        else:
            names.add(template)
    return names


def plan_tensors(spec: ArchSpec, config: dict, shapes: dict[str, tuple[int, ...]]) -> list[TensorPlan]:
    """Map every HF tensor to its GGUF name and transform; refuse anything unexpected.

    `shapes` maps HF tensor names to HF shapes. Quantized MLX weights (`.scales`/`.biases`
    companions) are refused with the fix, since llama.cpp cannot read MLX's packed uint32.
    """
    n_layers = int(config["num_hidden_layers"])
    tmap = gguf.get_tensor_name_map(spec.gguf_arch, n_layers)
    allowed = allowed_names(spec.gguf_arch, n_layers)
    tied = bool(config.get("tie_word_embeddings", False))
    if any(name.endswith(".scales") for name in shapes):
        raise ExportError(
            "the model folder holds MLX-quantized weights (*.scales / packed uint32); GGUF export "
            "needs real floats: fuse with `mlx_lm.fuse --dequantize` (the workflow's fuse step does)"
        )
    plans: list[TensorPlan] = []
    unmapped: list[str] = []
    for raw_name, shape in shapes.items():
        hf_name = strip_text_prefix(raw_name)
        if hf_name is None or _IGNORED.search(hf_name):
            continue
        if hf_name.startswith("lm_head") and (tied or not spec.has_output):
            # tied: llama.cpp reuses token_embd when there is no output tensor
            continue
        gguf_name = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        base = gguf_name.rsplit(".", 1)[0] if gguf_name else None
        if gguf_name is None or base not in allowed:
            unmapped.append(raw_name)
            continue
        transform = None
        if spec.permute_qk and base.endswith((".attn_q", ".attn_k")):
            transform = "permute_q" if base.endswith(".attn_q") else "permute_k"
        elif spec.norm_plus_one and hf_name.endswith("norm.weight"):
            transform = "plus_one"
        plans.append(TensorPlan(gguf_name, raw_name, tuple(shape), transform))
    if unmapped:
        raise ExportError(
            f"{len(unmapped)} tensor(s) have no place in a GGUF of arch {spec.name!r}: "
            f"{', '.join(sorted(unmapped)[:8])}{' …' if len(unmapped) > 8 else ''}"
        )
    names = [p.gguf_name for p in plans]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ExportError(f"several HF tensors map to the same GGUF tensor(s): {dupes}")
    if "token_embd.weight" not in names:
        raise ExportError("no token embedding (model.embed_tokens.weight) found in the weights")
    plans.extend(_generated_tensors(spec, config))
    return plans


def _generated_tensors(spec: ArchSpec, config: dict) -> list[TensorPlan]:
    rope = rope_settings(config)
    out = []
    if spec.name == "llama" and rope["rope_type"] == "llama3":
        freqs = llama3_rope_factors(config)
        out.append(TensorPlan("rope_freqs.weight", None, freqs.shape, generated=freqs))
    if spec.name == "phi3" and rope["rope_type"] == "longrope":
        for key, name in (
            ("long_factor", "rope_factors_long.weight"),
            ("short_factor", "rope_factors_short.weight"),
        ):
            arr = np.asarray(rope[key], dtype=np.float32)
            out.append(TensorPlan(name, None, arr.shape, generated=arr))
    return out


def llama3_rope_factors(config: dict) -> np.ndarray:
    """Per-frequency divisors for Llama 3.1+ RoPE scaling (llama.cpp's rope_freqs tensor)."""
    rope = rope_settings(config)
    theta = float(rope.get("rope_theta", 500000.0))
    dim = head_dim(config)
    factor = float(rope.get("factor", 8.0))
    low = float(rope.get("low_freq_factor", 1.0))
    high = float(rope.get("high_freq_factor", 4.0))
    orig = float(rope.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    low_wavelen, high_wavelen = orig / low, orig / high
    factors = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (orig / wavelen - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def permute_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """HF rotate-half row order -> llama.cpp interleaved order, per head (weights and biases)."""
    rows = weight.shape[0]
    if rows % n_heads or (rows // n_heads) % 2:
        raise ExportError(f"cannot permute a q/k tensor of {rows} rows into {n_heads} heads")
    half = rows // n_heads // 2
    rest = weight.shape[1:]
    return weight.reshape(n_heads, 2, half, *rest).swapaxes(1, 2).reshape(weight.shape)


def rows_per_head(plan: TensorPlan, config: dict) -> int:
    """Rows of one attention head in a permuted q/k tensor (chunks must hold whole heads)."""
    if plan.transform == "permute_q":
        return plan.shape[0] // int(config["num_attention_heads"])
    if plan.transform == "permute_k":
        return plan.shape[0] // int(config.get("num_key_value_heads") or config["num_attention_heads"])
    return 1


def apply_transform(plan: TensorPlan, data: np.ndarray, config: dict) -> np.ndarray:
    """Transform a block of whole rows (the full tensor or a chunk of whole heads)."""
    if plan.transform in ("permute_q", "permute_k"):
        return permute_rows(data, data.shape[0] // rows_per_head(plan, config))
    if plan.transform == "plus_one":
        return data + np.float32(1.0)
    return data
