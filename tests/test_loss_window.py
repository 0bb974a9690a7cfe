"""One definition of held-out loss: evaluation's valid loss equals training's step-0 valid loss."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from blogtune.evaluate import losses as ev
from blogtune.train import TrainSettings, target_window, train

WORDS = "vacuum bloat index tuple page lock replica wal checkpoint autovacuum".split()


def _samples(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "messages": [
                {"role": "user", "content": f"Write part 1 of post {i}."},
                {"role": "assistant", "content": " ".join(rng.choice(WORDS) for _ in range(rng.integers(8, 60)))},
            ],
            "article_id": f"a{i}",
        }
        for i in range(n)
    ]


def test_window_never_scores_token_zero_or_padding():
    assert target_window(10, 4) == (4, 10)
    assert target_window(10, 0) == (1, 10)  # nothing predicts the first token
    assert target_window(3, 9) == (2, 3)  # prompt cut by truncation: still one target


@pytest.mark.parametrize("max_seq_length", [512, 24])
def test_evaluation_valid_loss_equals_training_step0(tiny_llama, tmp_path, max_seq_length):
    from mlx_lm import convert, load

    mlx_dir = tmp_path / "mlx"
    convert(str(tiny_llama), str(mlx_dir), dtype="float32")
    data = tmp_path / "data"
    data.mkdir()
    valid = _samples(7, 1)  # 7: not a multiple of the batch size
    for name, rows in (("train", _samples(8, 0)), ("valid", valid)):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    settings = TrainSettings(iters=1, batch_size=2, max_seq_length=max_seq_length, mask_prompt=True, steps_per_eval=1, val_batches=-1)
    result = train(mlx_dir, data, tmp_path / "adapters", settings)

    model, tokenizer = load(str(mlx_dir))
    es = ev.EvalSettings(mask_prompt=True, max_seq_length=max_seq_length, batch_size=3)
    loss = ev.summarize(ev.sample_losses(model, tokenizer, valid, "valid", es)).loss
    assert loss == pytest.approx(result.base_valid_loss, rel=1e-5)
    if max_seq_length < 100:
        return  # every sample is cut at max_seq_length: no padding target exists to differ
    # The old window (one padding target more per sample) gives a different number.
    padded = ev.summarize(ev.sample_losses(model, tokenizer, valid, "valid", ev.EvalSettings(**{**es.__dict__, "score_pad_target": True}))).loss
    assert padded != pytest.approx(result.base_valid_loss, rel=1e-5)


def test_training_starts_use_the_shared_window(tmp_path, smollm2_tokenizer_obj):
    from blogtune.train.batches import encode_split

    path = tmp_path / "s.jsonl"
    rows = _samples(3, 2)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    enc = encode_split(Path(path), smollm2_tokenizer_obj, True, 512)
    for toks, (tokens, offset), start in zip(enc.tokens, ev.encode_samples(rows, smollm2_tokenizer_obj, True), enc.starts, strict=True):
        assert start == target_window(len(toks), offset)[0]
        assert toks == list(tokens)
