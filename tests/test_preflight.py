"""Preflight: a setting that cannot work fails when the workflow is parsed, naming the key and
the fix, before any stage runs (and before hours of training)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from blogtune.preflight import PreflightError, run_preflight
from blogtune.testing import REPO, deep_merge


def make_config(blog_dir: Path, **overrides) -> dict:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    cfg = deep_merge(cfg, {**overrides, "blog": {**overrides.get("blog", {}), "dir": str(blog_dir)}})
    validate(cfg, str(REPO / "schemas/config.schema.yaml"), set_default=True)
    return cfg


@pytest.fixture
def blog(tmp_path) -> Path:
    d = tmp_path / "blog"
    for i in range(3):
        (d / "202401").mkdir(parents=True, exist_ok=True)
        (d / "202401" / f"2024010{i}_01.md").write_text(f"# Post {i}\n\nText {i}.\n", encoding="utf-8")
    return d


@pytest.fixture
def work(tmp_path) -> Path:
    (tmp_path / "work").mkdir()
    return tmp_path / "work"


def fake_model(path: Path, model_type: str = "llama", weights: str = "model.safetensors", **cfg) -> Path:
    path.mkdir(parents=True)
    base = {"model_type": model_type, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000}
    (path / "config.json").write_text(json.dumps({**base, **cfg}))
    (path / weights).write_bytes(b"\0" * 16)
    return path


def fails(cfg: dict, work: Path, *needles: str) -> str:
    with pytest.raises(PreflightError) as err:
        run_preflight(cfg, work)
    msg = str(err.value)
    for needle in needles:
        assert needle in msg, msg
    return msg


def test_defaults_pass(blog, work):
    plan = run_preflight(make_config(blog), work)
    assert len(plan.posts) == 3 and plan.base_model.kind == "embedded" and plan.export_arch == "llama"


def test_blog_dir_missing_too_few_posts_or_containing_the_workdir(blog, work, tmp_path):
    fails(make_config(tmp_path / "nope"), work, "blog.dir", "not found")
    fails(make_config(blog, blog={"pattern": "202401/20240100_*.md"}), work, "blog.dir", "1 post")
    inside = blog / "out"
    inside.mkdir()
    fails(make_config(blog), inside, "blog.dir", "never written into your blog")


def test_fractions_must_add_up(blog, work):
    cfg = make_config(blog, split={"fractions": {"train": 0.8, "valid": 0.3, "test": 0.1}})
    fails(cfg, work, "split.fractions", "add up to 1")


def test_missing_local_model_and_pickle_only_weights(blog, work, tmp_path):
    fails(make_config(blog, base_model=str(tmp_path / "no-model")), work, "base_model", "not found")
    pickled = fake_model(tmp_path / "pickled", weights="pytorch_model.bin")
    fails(make_config(blog, base_model=str(pickled)), work, "base_model", "pytorch_model.bin", "safetensors")


def test_hub_id_while_offline_and_not_cached(blog, work, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    cfg = make_config(blog, base_model="Qwen/Qwen2.5-0.5B-Instruct")
    fails(cfg, work, "base_model", "HF_HUB_OFFLINE", "local folder")


def test_unsupported_export_architecture_fails_before_training(blog, work, tmp_path):
    model = fake_model(tmp_path / "mamba", model_type="mamba")
    msg = fails(make_config(blog, base_model=str(model)), work, "base_model", "mamba", "supported:")
    assert "qwen2" in msg and "llama" in msg


def test_training_that_cannot_fit_names_the_settings(blog, work, tmp_path, monkeypatch):
    big = fake_model(tmp_path / "big", hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                     num_attention_heads=64, num_key_value_heads=8, vocab_size=128256)
    cfg = make_config(blog, base_model=str(big), train={"batch_size": 8, "max_seq_length": 4096})
    fails(cfg, work, "batch_size", "max_seq_length", "GB")


def test_remote_code_is_off_unless_asked(blog, work):
    assert make_config(blog)["trust_remote_code"] is False
    text = (REPO / "rules/model.smk").read_text()
    assert 'trust_remote_code=config["trust_remote_code"]' in text


def test_sample_blog_is_left_untouched(work, tmp_path):
    blog = tmp_path / "copy"
    shutil.copytree(REPO / "sample_blog", blog)
    before = sorted((p.relative_to(blog), p.stat().st_mtime_ns) for p in blog.rglob("*"))
    run_preflight(make_config(blog), work)
    assert sorted((p.relative_to(blog), p.stat().st_mtime_ns) for p in blog.rglob("*")) == before
