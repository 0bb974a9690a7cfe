"""Base model → MLX model: quantize where it pays off, keep float32 where it does not.

Measured on Linux CPU: quantized and half-precision matmuls are 10–20x slower than fp32
(they bypass BLAS), so `quantize: auto` means "quantize on Metal/CUDA, float32 on CPU".
On a 16 GB Mac, 4-bit is what lets models up to ~4B parameters train at all.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from blogtune.io_utils import atomic_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConvertPlan:
    quantize: bool
    bits: int
    group_size: int
    dtype: str | None  # None: keep what the checkpoint says
    device: str

    def describe(self) -> str:
        what = f"{self.bits}-bit (group {self.group_size})" if self.quantize else "not quantized"
        return f"{what}, dtype {self.dtype or 'as in checkpoint'}, on {self.device}"


def accelerator() -> str:
    """'gpu' when MLX has Metal or CUDA here, else 'cpu'."""
    import mlx.core as mx

    if mx.metal.is_available() or (hasattr(mx, "cuda") and mx.cuda.is_available()):
        return "gpu"
    return "cpu"


def plan_conversion(quantize: str | bool, bits: int, group_size: int, dtype: str, device: str) -> ConvertPlan:
    if quantize == "auto":
        do_quant = device == "gpu"
    elif isinstance(quantize, bool):
        do_quant = quantize
    else:
        raise ValueError(f"model.quantize must be auto, true or false, not {quantize!r}")
    if dtype == "auto":
        resolved = "float32" if device == "cpu" else None
    else:
        resolved = dtype
    if do_quant and device == "cpu":
        log.warning("model.quantize is on while training on CPU: quantized matmuls are 10-20x slower here")
    return ConvertPlan(do_quant, bits, group_size, resolved, device)


def convert_to_mlx(
    source: str | Path, out_dir: Path, plan: ConvertPlan, trust_remote_code: bool = False,
    eos_token: str | None = None, bos_token: str | None = None,
) -> Path:
    """Run mlx-lm's converter into a temp folder and swap it in only on success.
    `eos_token`/`bos_token` (model.eos_token/bos_token) repair the special tokens of the result."""
    from mlx_lm import convert

    log.info("converting %s to MLX: %s", source, plan.describe())
    with atomic_dir(out_dir) as tmp:
        target = tmp / "model"  # mlx_lm.convert refuses an existing folder
        convert(
            str(source),
            mlx_path=str(target),
            quantize=plan.quantize,
            q_bits=plan.bits if plan.quantize else None,
            q_group_size=plan.group_size if plan.quantize else None,
            dtype=plan.dtype,
            trust_remote_code=trust_remote_code,
        )
        for item in target.iterdir():
            item.rename(tmp / item.name)
        target.rmdir()
        lift_rope_parameters(tmp / "config.json")
        from blogtune.model.special_tokens import apply_token_overrides

        apply_token_overrides(tmp, eos_token, bos_token)
        (tmp / "blogtune_convert.json").write_text(
            json.dumps({"source": str(source), **plan.__dict__}, indent=2) + "\n", encoding="utf-8"
        )
    return Path(out_dir)


def read_model_config(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))


def mlx_rope_keys(cfg: dict) -> dict:
    """Top-level rope keys mlx-lm needs but a transformers-5 config keeps in `rope_parameters`.

    mlx-lm's llama-family ModelArgs read only `rope_theta`/`rope_scaling` and silently fall back
    to rope_theta=10000 (SmolLM2 needs 100000): training, evaluation and `mlx_lm.generate` would
    all run a different model than the checkpoint. Returns {} when nothing is missing.
    """
    rope = cfg.get("rope_parameters")
    if "rope_theta" in cfg or not isinstance(rope, dict) or "rope_theta" not in rope:
        return {}
    out = {"rope_theta": float(rope["rope_theta"])}
    if rope.get("rope_type") not in (None, "default") and "rope_scaling" not in cfg:
        out["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    return out


def lift_rope_parameters(config_path: Path) -> dict:
    """Write the keys of `mlx_rope_keys` into config.json (kept beside `rope_parameters`)."""
    cfg = json.loads(Path(config_path).read_text(encoding="utf-8"))
    extra = mlx_rope_keys(cfg)
    if extra:
        log.info("config.json: adding top-level %s for mlx-lm", ", ".join(f"{k}={v}" for k, v in extra.items()))
        Path(config_path).write_text(json.dumps({**cfg, **extra}, indent=4) + "\n", encoding="utf-8")
    return extra


def rope_overrides(model_dir: Path) -> dict:
    """Safety net for an MLX folder converted before blogtune lifted rope keys: `model_config=` for mlx_lm.load."""
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    out = mlx_rope_keys(cfg)
    if out:
        log.warning("%s/config.json lacks a top-level rope_theta; using %s", model_dir, out["rope_theta"])
    return out
