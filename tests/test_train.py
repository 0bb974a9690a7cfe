"""Training on tiny random-weight models: LoRA/DoRA/full, adapters that mlx-lm loads and fuses,
real resume after SIGTERM, the memory preflight and the CPU BLAS setup."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from blogtune import blas

blas.setup_mlx_cpu()  # before mlx is imported by anything in this module

from blogtune.train import (  # noqa: E402
    LOSS_COLUMNS,
    MemoryError_,
    TrainingInterrupted,
    TrainSettings,
    check_fits,
    estimate_memory,
    iters_for,
    train,
)
from blogtune.train.batches import collate, encode_split, plan_batches  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FAST = dict(
    batch_size=4,
    rank=4,
    num_layers=-1,
    learning_rate=2e-3,
    warmup_steps=2,
    steps_per_report=2,
    steps_per_eval=4,
    save_every=3,
    max_seq_length=128,
    epochs=None,
)
SMOLLM2_CONFIG = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
}
WORDS = "postgres vacuum index table bloat autovacuum planner wal checkpoint replica lock".split()


def _sample(rng, i: int, chat: bool = True) -> dict:
    text = " ".join(rng.choice(WORDS) for _ in range(rng.integers(8, 40)))
    if not chat:
        return {"text": text, "article_id": f"a{i}"}
    return {
        "messages": [
            {"role": "user", "content": f"Write part {i % 3 + 1} of post {i}."},
            {"role": "assistant", "content": text},
        ],
        "article_id": f"a{i}",
        "part": 1,
        "parts": 1,
    }


def write_data(folder: Path, n_train: int = 16, n_valid: int = 4, chat: bool = True) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("valid", n_valid)):
        rows = [_sample(rng, i, chat) for i in range(n)]
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def mlx_tiny(tiny_llama, tmp_path_factory) -> Path:
    from mlx_lm import convert

    out = tmp_path_factory.mktemp("mlx_tiny") / "model"
    convert(str(tiny_llama), str(out), dtype="float32")
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def lora_run(mlx_tiny, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora")
    settings = TrainSettings(iters=12, **FAST)
    result = train(
        mlx_tiny, data_dir, out / "adapters", settings, loss_csv=out / "loss.csv", resume_dir=out / "resume"
    )
    return out, result


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- training


def test_lora_trains_and_writes_mlx_lm_layout(lora_run):
    out, result = lora_run
    assert sorted(p.name for p in (out / "adapters").iterdir()) == [
        "adapter_config.json",
        "adapters.safetensors",
    ]
    assert not (out / "resume").exists(), "resume state is deleted after success"
    rows = read_csv(out / "loss.csv")
    assert list(rows[0]) == list(LOSS_COLUMNS)
    valid = [r for r in rows if r["split"] == "valid"]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert valid[0]["step"] == "0" and valid[-1]["step"] == "12"
    assert float(valid[-1]["loss"]) < float(valid[0]["loss"]) - 0.2
    assert float(train_rows[-1]["loss"]) < float(train_rows[0]["loss"])
    assert all(float(r["tokens_per_second"]) > 0 for r in train_rows)
    assert int(train_rows[-1]["trained_tokens"]) == result.trained_tokens
    assert result.base_valid_loss == pytest.approx(float(valid[0]["loss"]), abs=1e-5)
    cfg = json.loads((out / "adapters" / "adapter_config.json").read_text())
    assert cfg["fine_tune_type"] == "lora" and cfg["lora_parameters"]["rank"] == 4
    assert cfg["mask_prompt"] is True and cfg["max_seq_length"] == 128


def test_adapters_load_and_fuse_with_mlx_lm(lora_run, mlx_tiny, tmp_path, monkeypatch):
    import mlx.core as mx
    from mlx_lm import fuse, load

    out, _ = lora_run
    x = mx.array([[1, 20, 300, 4000, 5]])
    base, _ = load(str(mlx_tiny))
    tuned, _ = load(str(mlx_tiny), adapter_path=str(out / "adapters"))
    assert not mx.allclose(base(x), tuned(x), atol=1e-4).item(), "adapters change the model"
    # What `mlx_lm.fuse --model M --adapter-path A --save-path F` does.
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "fuse",
            "--model",
            str(mlx_tiny),
            "--adapter-path",
            str(out / "adapters"),
            "--save-path",
            str(tmp_path / "fused"),
        ],
    )
    fuse.main()
    fused, _ = load(str(tmp_path / "fused"))
    assert mx.allclose(fused(x), tuned(x), atol=1e-4).item()


@pytest.mark.parametrize("kind", ["dora", "full"])
def test_dora_and_full(kind, mlx_tiny, data_dir, tmp_path):
    import mlx.core as mx
    from mlx_lm import load

    settings = TrainSettings(fine_tune_type=kind, iters=4, **{**FAST, "num_layers": 1})
    result = train(mlx_tiny, data_dir, tmp_path / "adapters", settings, loss_csv=tmp_path / "loss.csv")
    assert result.final_valid_loss < result.base_valid_loss
    weights = mx.load(str(tmp_path / "adapters" / "adapters.safetensors"))
    if kind == "dora":
        assert any(k.endswith(".m") for k in weights)
    else:
        assert any(k.endswith("mlp.down_proj.weight") for k in weights) and not any(
            "lora" in k for k in weights
        )
    model, _ = load(str(mlx_tiny), adapter_path=str(tmp_path / "adapters"))
    assert model(mx.array([[1, 2, 3]])).shape[-1] > 0


def test_frozen_prefix_cache_changes_nothing(mlx_tiny, data_dir, tmp_path):
    """Layers below the trained ones are frozen: caching their output per sample is exact."""
    import mlx.core as mx

    settings = TrainSettings(iters=8, **{**FAST, "num_layers": 1})  # 2 epochs: epoch 2 uses the cache
    cached = train(mlx_tiny, data_dir, tmp_path / "a", settings)
    plain = train(mlx_tiny, data_dir, tmp_path / "b", TrainSettings(**{**settings.to_dict(), "prefix_cache": False}))
    a = mx.load(str(tmp_path / "a" / "adapters.safetensors"))
    b = mx.load(str(tmp_path / "b" / "adapters.safetensors"))
    for k in a:
        assert mx.allclose(a[k], b[k], atol=1e-5, rtol=1e-4).item(), k
    assert cached.final_valid_loss == pytest.approx(plain.final_valid_loss, abs=1e-4)


def test_epochs_become_iters(mlx_tiny, data_dir, tmp_path):
    assert iters_for(TrainSettings(epochs=2, batch_size=4), 16) == 8
    assert iters_for(TrainSettings(epochs=1.5, batch_size=4), 18) == 8  # ceil(1.5 * 5)
    assert iters_for(TrainSettings(iters=3, epochs=10), 100) == 3  # iters wins
    result = train(mlx_tiny, data_dir, tmp_path / "a", TrainSettings(**{**FAST, "epochs": 0.5}))
    assert result.iters == 2 and len(result.step_stats) == 2


def test_text_format_and_truncation(mlx_tiny, tmp_path):
    data = write_data(tmp_path / "text", n_train=6, n_valid=2, chat=False)
    settings = TrainSettings(iters=2, **{**FAST, "max_seq_length": 16})
    result = train(mlx_tiny, data, tmp_path / "a", settings)  # mask_prompt is ignored for text
    assert result.samples_over_max_seq_length["train"] > 0


# --------------------------------------------------------------------------- resume


def _interrupt_at(step: int):
    def hook(s: int) -> None:
        if s == step:
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


def test_resume_after_sigterm_matches_uninterrupted(mlx_tiny, data_dir, tmp_path):
    import mlx.core as mx

    settings = TrainSettings(iters=8, **FAST)
    full = train(mlx_tiny, data_dir, tmp_path / "full", settings, loss_csv=tmp_path / "full.csv")

    resume = tmp_path / "resume"
    with pytest.raises(TrainingInterrupted) as info:
        train(
            mlx_tiny,
            data_dir,
            tmp_path / "b",
            settings,
            loss_csv=tmp_path / "b.csv",
            resume_dir=resume,
            on_step=_interrupt_at(5),
        )
    assert info.value.step == 5 and info.value.signum == signal.SIGTERM
    assert not (tmp_path / "b").exists(), "no half-written adapters"
    state = json.loads((resume / "checkpoint" / "state.json").read_text())
    assert state["step"] == 5
    assert {"adapters.safetensors", "optimizer.safetensors", "state.json"} <= {
        p.name for p in (resume / "checkpoint").iterdir()
    }

    again = train(
        mlx_tiny, data_dir, tmp_path / "b", settings, loss_csv=tmp_path / "b.csv", resume_dir=resume
    )
    assert again.resumed_from_step == 5 and len(again.step_stats) == 3
    assert not resume.exists()
    a = mx.load(str(tmp_path / "full" / "adapters.safetensors"))
    b = mx.load(str(tmp_path / "b" / "adapters.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert mx.allclose(a[k], b[k], atol=1e-5, rtol=1e-4).item(), k
    assert again.final_valid_loss == pytest.approx(full.final_valid_loss, abs=1e-4)
    rows_full, rows_b = read_csv(tmp_path / "full.csv"), read_csv(tmp_path / "b.csv")
    assert [(r["step"], r["split"]) for r in rows_b] == [(r["step"], r["split"]) for r in rows_full]
    lr_full = [r["learning_rate"] for r in rows_full]
    assert [r["learning_rate"] for r in rows_b] == lr_full, "the LR schedule continues, not restarts"


def test_changed_settings_start_fresh(mlx_tiny, data_dir, tmp_path, caplog):
    settings = TrainSettings(iters=6, **FAST)
    resume = tmp_path / "resume"
    with pytest.raises(TrainingInterrupted):
        train(mlx_tiny, data_dir, tmp_path / "a", settings, resume_dir=resume, on_step=_interrupt_at(3))
    assert (resume / "checkpoint" / "state.json").is_file()
    changed = TrainSettings(iters=6, **{**FAST, "learning_rate": 1e-3})
    with caplog.at_level(logging.INFO, logger="blogtune.train"):
        result = train(mlx_tiny, data_dir, tmp_path / "a", changed, resume_dir=resume)
    assert result.resumed_from_step == 0 and len(result.step_stats) == 6
    assert "starting fresh" in caplog.text


# --------------------------------------------------------------------------- pieces


def test_settings_from_dict_rejects_unknown_keys():
    assert TrainSettings.from_dict({"rank": 8, "iters": None}).rank == 8
    with pytest.raises(ValueError, match="lerning_rate"):
        TrainSettings.from_dict({"lerning_rate": 1e-4})
    with pytest.raises(ValueError, match="fine_tune_type"):
        TrainSettings.from_dict({"fine_tune_type": "qlora"})


def test_settings_defaults_and_bounds_come_from_the_schema():
    from blogtune.schema import section_defaults, section_schema

    defaults = section_defaults("train")
    assert {k: getattr(TrainSettings(), k) for k in defaults} == defaults
    config_keys = set(section_schema("train")["properties"])
    assert {f for f in TrainSettings().to_dict() if f != "compile"} == config_keys
    top = section_schema("train")["properties"]["dropout"]["maximum"]
    TrainSettings(dropout=top).validate()
    with pytest.raises(ValueError, match="train.dropout"):
        TrainSettings(dropout=top + 0.01).validate()
    for key in ("num_layers", "val_batches"):  # 0 means nothing: neither -1 (all) nor a count
        with pytest.raises(ValueError, match=f"train.{key}"):
            TrainSettings(**{key: 0}).validate()


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_lr_schedule_warms_up_from_the_first_update_unlike_mlx_lm(kind):
    """Ours: lr * (s + 1) / warmup during warmup, then the decay. mlx-lm's build_schedule starts
    at lr 0 and joins one step later; if it ever matches ours, use it instead (make_schedule)."""
    import mlx.core as mx
    from mlx_lm.tuner.utils import build_schedule

    from blogtune.train.loop import make_schedule

    lr, lo, warm, total = 1e-3, 1e-5, 4, 20
    settings = TrainSettings(learning_rate=lr, min_learning_rate=lo, warmup_steps=warm, lr_schedule=kind)
    ours = [make_schedule(settings, total)(mx.array(s)).item() for s in range(total + 1)]
    assert ours[:warm] == pytest.approx([lr * (s + 1) / warm for s in range(warm)], rel=1e-4)
    assert ours[warm] == pytest.approx(lr, rel=1e-4)
    assert ours[total] == pytest.approx(lr if kind == "constant" else lo, rel=1e-3)
    if kind != "constant":
        name = {"cosine": "cosine_decay", "linear": "linear_schedule"}[kind]
        args = [lr, total - warm, lo] if kind == "cosine" else [lr, lo, total - warm]
        theirs = build_schedule({"name": name, "arguments": args, "warmup": warm})
        mlx_lm = [theirs(mx.array(s)).item() for s in range(total + 1)]
        assert mlx_lm[0] == 0.0 and ours[0] > 0
        assert mlx_lm[warm + 1] == pytest.approx(lr, rel=1e-4) and ours[warm + 1] < lr


def test_batches_group_lengths_and_are_deterministic():
    lengths = [10, 300, 12, 290, 11, 310, 13, 305]
    a = plan_batches(lengths, 2, seed=0, epoch=0)
    assert a == plan_batches(lengths, 2, seed=0, epoch=0)
    assert sorted(i for b in a for i in b) == list(range(8))
    for b in a:
        assert max(lengths[i] for i in b) - min(lengths[i] for i in b) < 50, "similar lengths share a batch"


def test_collate_scores_only_answer_tokens(smollm2_tokenizer_obj, tmp_path):
    data = write_data(tmp_path, n_train=3, n_valid=0)
    enc = encode_split(data / "train.jsonl", smollm2_tokenizer_obj, mask_prompt=True, max_seq_length=512)
    parts = collate(enc, [0, 1, 2], n_parts=2)
    assert len(parts) == 2
    scored = 0
    for inputs, rows, targets, weights, ids in parts:
        assert len(ids) == inputs.shape[0]
        assert inputs.shape[1] % 32 == 0 and len(rows) % 64 == 0
        real = weights > 0
        flat = inputs.reshape(-1)
        # each scored row's next input token is its target (except at a sample's last position)
        nxt = rows[real] + 1
        inside = nxt < flat.size
        same = flat[nxt[inside]] == targets[real][inside]
        assert same.mean() > 0.8
        scored += int(real.sum())
    im_end = smollm2_tokenizer_obj.convert_tokens_to_ids("<|im_end|>")
    assert scored == sum(len(t) - s for t, s in zip(enc.tokens, enc.starts, strict=True))
    # ChatML renders "<|im_end|>\n": the end-of-turn token is trained on (it is scored).
    assert all(im_end in t[-2:] for t in enc.tokens), "chat samples end with the end-of-turn token"


def test_cpu_attention_and_loss_match_mlx():
    import mlx.core as mx
    import mlx.nn as nn

    from blogtune.train.kernels import cpu_attention, make_cross_entropy

    for t in (5, 130, 300):
        q, k, v = (
            mx.random.normal((2, 6, t, 16)),
            mx.random.normal((2, 2, t, 16)),
            mx.random.normal((2, 2, t, 16)),
        )
        ref = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask="causal")
        assert mx.allclose(cpu_attention(q, k, v, None, 0.25, "causal"), ref, atol=1e-5).item()
    ce = make_cross_entropy()
    logits, targets = mx.random.normal((7, 50)) * 3, mx.array([1, 2, 3, 4, 5, 6, 49])
    assert mx.allclose(ce(logits, targets), nn.losses.cross_entropy(logits, targets), atol=1e-5).item()
    g1 = mx.grad(lambda x: (ce(x, targets) * mx.arange(7)).sum())(logits)
    g2 = mx.grad(lambda x: (nn.losses.cross_entropy(x, targets) * mx.arange(7)).sum())(logits)
    assert mx.allclose(g1, g2, atol=1e-5).item()


# --------------------------------------------------------------------------- memory preflight


def test_memory_estimate_is_monotonic_and_sane():
    base = TrainSettings(batch_size=4, max_seq_length=400, rank=8, num_layers=16)
    est = estimate_memory(SMOLLM2_CONFIG, 32, base)
    assert 130e6 < est.params < 140e6
    assert 2.5e9 < est.total_bytes < 6e9  # measured MLX peak for this run: 3.8 GB
    bigger = [
        TrainSettings(**{**base.to_dict(), k: v})
        for k, v in (("batch_size", 8), ("max_seq_length", 800), ("num_layers", 30), ("rank", 64))
    ]
    for s in bigger:
        assert estimate_memory(SMOLLM2_CONFIG, 32, s).total_bytes > est.total_bytes, s
    ckpt = TrainSettings(**{**base.to_dict(), "grad_checkpoint": True})
    assert estimate_memory(SMOLLM2_CONFIG, 32, ckpt).activation_bytes < est.activation_bytes
    assert estimate_memory(SMOLLM2_CONFIG, 4, base).weights_bytes < est.weights_bytes / 6
    full = TrainSettings(**{**base.to_dict(), "fine_tune_type": "full"})
    assert estimate_memory(SMOLLM2_CONFIG, 32, full).trainable_params > 50e6


def test_check_fits_names_the_settings_to_lower():
    seven_b = {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
    }
    est = estimate_memory(seven_b, 16, TrainSettings(batch_size=4, max_seq_length=2048))
    check_fits(est, 512 * 1024**3)  # fits on a big machine
    with pytest.raises(MemoryError_) as info:
        check_fits(est, 16 * 1024**3)
    msg = str(info.value)
    for key in ("batch_size", "max_seq_length", "num_layers", "grad_checkpoint", "quantize"):
        assert key in msg
    assert "GB" in msg


# --------------------------------------------------------------------------- BLAS


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux CPU backend only")
def test_blas_finds_and_uses_openblas():
    path = blas.find_openblas()
    if path is None:
        pytest.skip("no OpenBLAS installed (apt-get install libopenblas0-pthread)")
    code = (
        "import json; from blogtune import blas; blas.setup_mlx_cpu(); import mlx.core; "
        "print(json.dumps(blas.blas_report()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["blas"] == "openblas" and report["blas_path"] == str(path)


def _blas_report_in_child(**env_overrides) -> dict:
    """blas_report() of a fresh process that ran setup_mlx_cpu(), without this process's
    OPENBLAS_CORETYPE (this module's own setup may have set it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "LD_PRELOAD")}
    env.update(env_overrides)
    code = (
        "import json, os; from blogtune import blas; blas.setup_mlx_cpu(); import mlx.core; "
        "print(json.dumps({**blas.blas_report(), 'coretype': os.environ.get('OPENBLAS_CORETYPE')}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_openblas_kernels_are_upgraded_only_from_pre_avx2_choices():
    skx = set(blas.AVX512_FLAGS) | {"avx2", "fma", "sse3"}
    assert blas.kernels_for("Prescott", skx) == "SkylakeX"  # Debian 12's OpenBLAS on Sapphire Rapids
    assert blas.kernels_for("Sandybridge", {"avx", "avx2", "fma"}) == "Haswell"
    assert blas.kernels_for("Prescott", {"sse3", "avx"}) is None  # the CPU has nothing better
    for known in ("Haswell", "Zen", "SkylakeX", "Cooperlake"):  # a right choice is never second-guessed
        assert blas.kernels_for(known, skx) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux CPU backend only")
def test_openblas_runs_the_kernels_this_cpu_supports():
    path = blas.find_openblas()
    if path is None:
        pytest.skip("no OpenBLAS installed (apt-get install libopenblas0-pthread)")
    flags = blas._cpu_flags()
    report = _blas_report_in_child()
    assert report["blas"] == "openblas" and report["blas_core"]
    if {"avx2", "fma"} <= flags:  # an SSE kernel here runs matmuls 3x slower (Prescott on a Xeon)
        assert report["blas_core"].lower() in blas.AVX2_CORES, report
    if report["coretype"]:  # named only when OpenBLAS's own choice was pre-AVX2
        assert blas.openblas_core(path).lower() not in blas.AVX2_CORES
    else:
        assert blas.openblas_core(path) == report["blas_core"]
    # a core type the user named is kept as is
    assert _blas_report_in_child(OPENBLAS_CORETYPE="Prescott")["blas_core"] == "Prescott"


def test_collate_weighs_only_the_end_of_turn_targets(smollm2_tokenizer_obj, tmp_path):
    data = write_data(tmp_path, n_train=3, n_valid=0)
    enc = encode_split(data / "train.jsonl", smollm2_tokenizer_obj, mask_prompt=True, max_seq_length=512)
    im_end = smollm2_tokenizer_obj.convert_tokens_to_ids("<|im_end|>")
    plain = collate(enc, [0, 1, 2], n_parts=1)[0]
    ((_, _, targets, weights, _),) = collate(enc, [0, 1, 2], n_parts=1, eos_ids=[im_end], eos_weight=6.0)
    assert (weights == 6.0).sum() == 3, "one end-of-turn target per chat sample"
    assert (targets[weights == 6.0] == im_end).all()
    assert np.array_equal(weights > 0, plain[3] > 0), "padding stays unscored"
    assert set(np.unique(weights)) == {0.0, 1.0, 6.0}
