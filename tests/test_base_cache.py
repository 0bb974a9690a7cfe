"""The base model's half of evaluation and of the exam is reused when only the adapters change
(blogtune.evaluate.base_cache): same numbers as computing it, computed again when anything it
depends on changes."""

from __future__ import annotations

import json

import pytest
from test_evaluate import adapters, data_dir, make_lora_adapters, mlx_model, splits  # noqa: F401
from test_exam_scoring import exam_items  # noqa: F401

from blogtune.evaluate import base_cache, pair
from blogtune.evaluate import settings as ev
from blogtune.exam import run as exam_run
from blogtune.exam.run import ExamSettings, run_exam


def test_key_follows_the_model_files_and_the_parts(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"\x00" * 1000)
    (model / "config.json").write_text("{}")
    key = base_cache.cache_key(model, "exam", [1, 2])
    assert base_cache.cache_key(model, "exam", [1, 2]) == key
    assert base_cache.cache_key(model, "exam", [1, 3]) != key
    (model / "model.safetensors").write_bytes(b"\x00" * 999 + b"\x01")  # one byte of the weights
    assert base_cache.cache_key(model, "exam", [1, 2]) != key


def test_entries_round_trip_and_only_the_newest_stay(tmp_path):
    cache = base_cache.BaseCache(tmp_path / "c")
    assert cache.load("k0") is None
    for i in range(base_cache.KEEP + 2):
        cache.save(f"k{i}", {"i": i})
    assert cache.load(f"k{base_cache.KEEP + 1}") == {"i": base_cache.KEEP + 1}
    assert len(list((tmp_path / "c").glob("*.json"))) == base_cache.KEEP
    assert base_cache.BaseCache(None).load("k1") is None  # no folder: never hits
    (tmp_path / "c" / "bad.json").write_text("{trunc")
    assert cache.load("bad") is None  # a damaged entry is computed again


def _untimed(rows: list[dict]) -> list[dict]:
    """Generation rows without their wall-clock seconds."""
    return [{k: ({**v, "seconds": None} if isinstance(v, dict) else v) for k, v in r.items()} for r in rows]


@pytest.fixture
def counted(monkeypatch):
    """Counts the passes that score a model (the functions the base half would call)."""
    calls: dict[str, int] = {}

    def counting(module, name):
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    counting(exam_run.scoring, "multiple_choice")
    counting(exam_run.scoring, "greedy_answers")
    counting(pair, "sample_losses")
    counting(pair, "generate_all")
    return calls


def test_exam_reuses_the_base_half_for_new_adapters(mlx_model, splits, exam_items, tmp_path, counted):  # noqa: F811
    settings = ExamSettings(max_tokens=6, generate_items=4, batch_size=4)
    cache = base_cache.BaseCache(tmp_path / "cache")
    first = make_lora_adapters(mlx_model, splits["train"][:4], tmp_path / "a1", steps=2)
    second = make_lora_adapters(mlx_model, splits["train"][4:8], tmp_path / "a2", steps=3)
    run_exam(mlx_model, first, exam_items, settings, base_cache=cache)
    assert counted == {"multiple_choice": 2, "greedy_answers": 2}
    metrics, rows = run_exam(mlx_model, second, exam_items, settings, base_cache=cache)
    assert counted == {"multiple_choice": 3, "greedy_answers": 3}  # the adapters' half only
    fresh_metrics, fresh_rows = run_exam(mlx_model, second, exam_items, settings)
    assert json.dumps(rows, sort_keys=True) == json.dumps(fresh_rows, sort_keys=True)
    assert metrics["stop_rate"] == fresh_metrics["stop_rate"]
    assert metrics["speed"]["base"]["multiple_choice"]["cached"] is True
    counted.clear()
    run_exam(mlx_model, second, exam_items[1:], settings, base_cache=cache)  # other items
    assert counted == {"multiple_choice": 2, "greedy_answers": 2}


def test_evaluation_reuses_the_base_pass_for_new_adapters(mlx_model, adapters, data_dir, splits, tmp_path, counted):  # noqa: F811
    files = {s: data_dir / f"{s}.jsonl" for s in splits}
    settings = ev.EvalSettings(mask_prompt=True, max_seq_length=256, batch_size=3, train_sample_articles=2, heldout_prompts=1, max_tokens=4)
    cache = base_cache.BaseCache(tmp_path / "cache")
    other = make_lora_adapters(mlx_model, splits["train"][4:8], tmp_path / "a2", steps=3)
    pair.evaluate_model_pair(mlx_model, adapters, files, settings, base_cache=cache)
    assert counted == {"sample_losses": 6, "generate_all": 2}
    cached = pair.evaluate_model_pair(mlx_model, other, files, settings, base_cache=cache)
    assert counted == {"sample_losses": 9, "generate_all": 3}
    fresh = pair.evaluate_model_pair(mlx_model, other, files, settings)
    assert cached.per_article == fresh.per_article
    assert _untimed(cached.generations) == _untimed(fresh.generations)
    assert cached.metrics["splits"] == fresh.metrics["splits"]
    counted.clear()
    longer = ev.EvalSettings(**{**settings.__dict__, "max_tokens": 5})  # a setting the base pass uses
    pair.evaluate_model_pair(mlx_model, other, files, longer, base_cache=cache)
    assert counted == {"sample_losses": 6, "generate_all": 2}
