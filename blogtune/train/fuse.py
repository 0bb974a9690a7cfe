"""LoRA adapters + base → one de-quantized HF-format model that later export can read.

mlx-lm's fuse does the maths; we add what users lose at this step: de-quantized weights
(llama.cpp cannot read MLX-packed 4-bit), every tokenizer file and the chat template
carried over from the base, and a check that the template survived.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from blogtune.io_utils import atomic_dir

log = logging.getLogger(__name__)

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
)


class FuseError(RuntimeError):
    pass


def fuse_adapters(base_dir: Path, adapter_dir: Path, out_dir: Path) -> Path:
    from mlx.utils import tree_unflatten
    from mlx_lm.utils import dequantize_model, load, save

    log.info("loading %s with adapters %s", base_dir, adapter_dir)
    model, tokenizer, config = load(str(base_dir), adapter_path=str(adapter_dir), return_config=True)
    fused = [(n, m.fuse(dequantize=True)) for n, m in model.named_modules() if hasattr(m, "fuse")]
    # train.fine_tune_type: full saves whole trained weights, which `load` has already put in place.
    full = adapter_fine_tune_type(Path(adapter_dir)) == "full"
    if not fused and not full:
        raise FuseError(f"no LoRA/DoRA layers found in {adapter_dir}; nothing to fuse")
    if fused:
        model.update_modules(tree_unflatten(fused))
    model = dequantize_model(model)
    config.pop("quantization", None)
    config.pop("quantization_config", None)
    log.info("%s; saving de-quantized model", "fully trained weights" if full else f"fused {len(fused)} adapter layers")
    with atomic_dir(out_dir) as tmp:
        save(tmp, str(base_dir), model, tokenizer, config, donate_model=False)
        copy_tokenizer_files(Path(base_dir), tmp)
        check_chat_template(Path(base_dir), tmp)
    return Path(out_dir)


def adapter_fine_tune_type(adapter_dir: Path) -> str:
    path = adapter_dir / "adapter_config.json"
    return json.loads(path.read_text(encoding="utf-8")).get("fine_tune_type", "lora") if path.is_file() else "lora"


def copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
    """Copy tokenizer files the saver did not write (e.g. tokenizer.model, the jinja sidecar)."""
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file() and not (dst / name).exists():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    if copied:
        log.info("carried over from the base model: %s", ", ".join(copied))
    return copied


def chat_template_of(model_dir: Path) -> str | None:
    from transformers import AutoTokenizer

    return getattr(AutoTokenizer.from_pretrained(model_dir), "chat_template", None)


def check_chat_template(base_dir: Path, fused_dir: Path) -> None:
    before, after = chat_template_of(base_dir), chat_template_of(fused_dir)
    if before != after:
        raise FuseError(
            f"the chat template changed during fuse ({fused_dir}); training and serving would disagree"
        )
