"""Tiny real models for tests and benchmarks: random weights, a real tokenizer, HF layout.

Every stage (convert, train, fuse, GGUF export, evaluate) runs for real on these in seconds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from blogtune.io_utils import atomic_dir
from blogtune.model.base_model import embedded_gguf_path, export_tokenizer

TINY_DIMS = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
)


def smollm2_tokenizer(out_dir: Path) -> Path:
    """The embedded model's real tokenizer (ChatML template, eos <|im_end|>) as HF files."""
    out_dir = Path(out_dir)
    if not (out_dir / "tokenizer.json").is_file():
        export_tokenizer(embedded_gguf_path(), out_dir)
    return out_dir


def build_tiny_model(
    out_dir: Path,
    tokenizer_dir: Path,
    model_type: str = "llama",
    seed: int = 0,
    **overrides,
) -> Path:
    """Write a random-weight model of `model_type` sized to the tokenizer, plus its tokenizer files."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    dims = {**TINY_DIMS, **overrides}
    dims.setdefault("vocab_size", len(tokenizer))
    dims.setdefault("tie_word_embeddings", True)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        token_id = getattr(tokenizer, name, None)
        if token_id is not None:
            dims.setdefault(name, token_id)
    config = AutoConfig.for_model(model_type, **dims)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for extra in ("chat_template.jinja", "tokenizer.model", "special_tokens_map.json"):
            src = Path(tokenizer_dir) / extra
            if src.is_file() and not (tmp / extra).exists():
                shutil.copy2(src, tmp / extra)
    return Path(out_dir)


REPO = Path(__file__).resolve().parents[1]


def deep_merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def write_config(workdir: Path, overrides: dict) -> Path:
    """The shipped config.yaml with `overrides` merged in, written to workdir/config.yaml."""
    import yaml

    base = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    path = Path(workdir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(deep_merge(base, overrides), allow_unicode=True), encoding="utf-8")
    return path


def run_snakemake(
    workdir: Path, *args: str, cores: int | None = 2, check: bool = True, timeout: float | None = None
):
    """Run this repo's workflow in `workdir` (which holds config.yaml); returns CompletedProcess.

    cores=None passes no --cores, as a user typing `snakemake --report report.html` does."""
    import subprocess
    import sys

    cmd = [
        sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args,
        # Last: --configfile takes several values and would swallow the targets after it.
        "--configfile", str(Path(workdir) / "config.yaml"),
    ]
    if cores is not None:
        cmd += ["--cores", str(cores)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


def dry_run_reasons(workdir: Path, *targets: str) -> dict[str, str]:
    """{rule: reason} that `snakemake -n` would run; empty when nothing is to be done."""
    proc = run_snakemake(workdir, "-n", *targets)
    reasons: dict[str, str] = {}
    rule = None
    for line in (proc.stdout + proc.stderr).splitlines():
        line = line.strip()
        if line.startswith("rule ") and line.endswith(":"):
            rule = line[5:-1]
        elif line.startswith("localrule ") and line.endswith(":"):
            rule = line[10:-1]
        elif line.startswith("reason:") and rule:
            reasons[rule] = line[len("reason:"):].strip()
            rule = None
    return reasons
