"""Models and training modes beyond the default LoRA on SmolLM2, through the real workflow on a tiny
model: full fine-tuning, the QLoRA path every Mac user runs (4-bit base), and a model whose
eos_token is wrong until `model.eos_token` repairs it (issue 13, items 5, 6, 14)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest

from blogtune.io_utils import read_jsonl
from blogtune.testing import REPO, build_tiny_model, run_snakemake, write_config

POSTS = 4
TRAIN = {
    "iters": 3, "epochs": None, "batch_size": 2, "max_seq_length": 128, "num_layers": 2, "rank": 4,
    "steps_per_report": 1, "steps_per_eval": 3, "save_every": 3, "val_batches": 1, "warmup_steps": 1,
    "learning_rate": 1e-2,
}


def blog_with_posts(dst: Path, n: int = POSTS) -> Path:
    posts = sorted(p for p in (REPO / "sample_blog").rglob("*.md") if p.name != "README.md")[:n]
    for p in posts:
        target = dst / p.relative_to(REPO / "sample_blog")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, target)
    return dst


def workdir(tmp_path: Path, base: Path, **overrides) -> Path:
    work = tmp_path / "work"
    blog = blog_with_posts(tmp_path / "blog")
    cfg = {"blog": {"dir": str(blog)}, "base_model": str(base), **overrides}
    cfg["train"] = {**TRAIN, **overrides.get("train", {})}
    write_config(work, cfg)
    return work


def results(work: Path) -> Path:
    (folder,) = [p for p in (work / "results").iterdir() if p.name != "data"]
    return folder


def gguf_fields(path: Path) -> dict:
    reader = gguf.GGUFReader(path)
    out = {}
    for name, field in reader.fields.items():
        if field.types and field.types[0] == gguf.GGUFValueType.STRING and len(field.data) == 1:
            out[name] = bytes(field.parts[field.data[0]]).decode()
        elif len(field.data) == 1:
            out[name] = field.parts[field.data[0]].tolist()[0]
    return out


def mlx_logits(model_dir: Path, ids: list[int], adapters: Path | None = None) -> np.ndarray:
    import mlx.core as mx
    from mlx_lm.utils import load

    model, _ = load(str(model_dir), adapter_path=str(adapters) if adapters else None)
    return np.array(model(mx.array([ids])).astype(mx.float32))[0]


# ---------------------------------------------------------------------------------------------


def test_full_fine_tune_fuses_and_exports(tmp_path, tiny_llama):
    """Item 5: fine_tune_type full used to fail at fuse ("no LoRA/DoRA layers")."""
    work = workdir(tmp_path, tiny_llama, train={"fine_tune_type": "full"})
    run_snakemake(work, "modelfile")
    out = results(work)
    from safetensors.numpy import load_file

    trained = load_file(out / "train/adapters/adapters.safetensors")
    fused = {}
    for f in (out / "fused").glob("*.safetensors"):
        fused.update(load_file(f))
    base = load_file(next(tiny_llama.glob("*.safetensors")))
    name = "model.layers.1.mlp.down_proj.weight"
    assert name in trained and np.array_equal(fused[name], trained[name])
    assert not np.allclose(fused[name], base[name])  # the trained weights, not the base
    assert json.loads((out / "train/adapters/adapter_config.json").read_text())["fine_tune_type"] == "full"
    (gguf_file,) = (out / "gguf").glob("*.gguf")
    assert gguf_fields(gguf_file)["tokenizer.ggml.pre"] == "smollm"
    export = json.loads((out / "gguf/export.json").read_text())
    assert export["pre_tokenizer_rule"] == "hash"
    assert 'PARAMETER stop "<|im_end|>"' in (out / "gguf/Modelfile").read_text()


def test_qlora_4bit_base_fuses_dequantized_and_exports(tmp_path, tiny_llama):
    """Item 6: model.quantize true -> 4-bit MLX base -> LoRA -> fused, de-quantized -> GGUF; the
    fused model computes what the 4-bit base with its adapters computes."""
    work = workdir(tmp_path, tiny_llama, model={"quantize": True, "bits": 4, "group_size": 32})
    run_snakemake(work, "gguf")
    out = results(work)
    base_cfg = json.loads((out / "mlx_base/config.json").read_text())
    assert base_cfg["quantization"]["bits"] == 4
    fused_cfg = json.loads((out / "fused/config.json").read_text())
    assert "quantization" not in fused_cfg and "quantization_config" not in fused_cfg
    from safetensors.numpy import load_file

    fused = {}
    for f in (out / "fused").glob("*.safetensors"):
        fused.update(load_file(f))
    assert not any(k.endswith((".scales", ".biases")) for k in fused)  # llama.cpp cannot read MLX 4-bit
    ids = [1, 504, 3458, 282, 253, 1345, 30, 2, 1, 9690, 198, 1249]
    want = mlx_logits(out / "mlx_base", ids, out / "train/adapters")
    got = mlx_logits(out / "fused", ids)
    plain = mlx_logits(out / "mlx_base", ids)  # the 4-bit base without adapters
    tol = 1e-3 * np.abs(want).max()
    assert np.abs(want - plain).max() > 20 * tol  # training moved the logits: the check can fail
    np.testing.assert_allclose(got, want, atol=tol, rtol=0)
    (gguf_file,) = (out / "gguf").glob("*.gguf")
    reader = gguf.GGUFReader(gguf_file)
    assert {t.name for t in reader.tensors} >= {"token_embd.weight", "blk.1.ffn_down.weight"}


# ---------------------------------------------------------------------------------------------
# item 14: a ChatML model whose tokenizer says eos_token <|endoftext|> (early Yi chat models)


@pytest.fixture(scope="module")
def wrong_eos_model(tmp_path_factory, smollm2_tok_dir) -> Path:
    from transformers import AutoTokenizer

    tok_dir = tmp_path_factory.mktemp("wrong_eos_tok")
    tok = AutoTokenizer.from_pretrained(smollm2_tok_dir)
    tok.eos_token = "<|endoftext|>"
    tok.save_pretrained(tok_dir)
    for extra in ("chat_template.jinja",):
        if (smollm2_tok_dir / extra).is_file() and not (tok_dir / extra).exists():
            shutil.copy2(smollm2_tok_dir / extra, tok_dir / extra)
    model = build_tiny_model(tmp_path_factory.mktemp("wrong_eos") / "model", tok_dir)
    assert json.loads((model / "tokenizer_config.json").read_text())["eos_token"] == "<|endoftext|>"
    return model


def test_wrong_eos_fails_before_any_work_naming_the_key(tmp_path, wrong_eos_model):
    work = workdir(tmp_path, wrong_eos_model)
    proc = run_snakemake(work, "-n", "modelfile", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "model.eos_token" in out and "<|im_end|>" in out, out[-2000:]
    assert not (work / "results").exists()


def test_eos_override_is_honoured_by_every_stage(tmp_path, wrong_eos_model):
    work = workdir(tmp_path, wrong_eos_model, model={"eos_token": "<|im_end|>"}, train={"iters": 1})
    run_snakemake(work, "modelfile")
    out = results(work)
    im_end = 2
    stats = json.loads((out / "data/format_stats.json").read_text())
    assert stats["eos_token"] == "<|im_end|>" and stats["end_of_turn"] == "<|im_end|>"
    assert all(s["ending_at_end_of_turn"] == s["samples"] for s in stats["splits"].values())
    for stage in ("mlx_base", "fused"):
        folder = out / stage
        assert json.loads((folder / "tokenizer_config.json").read_text())["eos_token"] == "<|im_end|>", stage
        assert json.loads((folder / "config.json").read_text())["eos_token_id"] == im_end, stage
        gen = folder / "generation_config.json"
        if gen.is_file():
            assert json.loads(gen.read_text())["eos_token_id"] == im_end, stage
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out / "fused").eos_token == "<|im_end|>"
    (gguf_file,) = (out / "gguf").glob("*.gguf")
    assert gguf_fields(gguf_file)["tokenizer.ggml.eos_token_id"] == im_end
    modelfile = (out / "gguf/Modelfile").read_text()
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    rows = list(read_jsonl(out / "data/train.jsonl"))
    assert rows and rows[0]["messages"][-1]["role"] == "assistant"
