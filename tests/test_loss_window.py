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


def _weighted_mean_loss(model, tokenizer, rows: list[dict], eos_weight: float) -> float:
    """The training loss of one batch holding `rows`, computed apart from blogtune's batching:
    each answer token's cross-entropy, the end-of-turn token's weighing `eos_weight`."""
    import mlx.core as mx

    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    total = weight = 0.0
    for tokens, offset in ev.encode_samples(rows, tokenizer, True):
        tokens = list(tokens)
        first, stop = target_window(len(tokens), offset)
        logits = model(mx.array([tokens[:-1]]))[0].astype(mx.float32)
        logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        for j in range(first, stop):
            w = eos_weight if tokens[j] == im_end else 1.0
            total -= w * logp[j - 1, tokens[j]].item()
            weight += w
    return total / weight


def test_eos_weight_weighs_the_end_of_turn_token_in_training_only(tiny_llama, tmp_path):
    from mlx_lm import convert, load

    mlx_dir = tmp_path / "mlx"
    convert(str(tiny_llama), str(mlx_dir), dtype="float32")
    data = tmp_path / "data"
    data.mkdir()
    train_rows, valid = _samples(5, 3), _samples(3, 4)
    for name, rows in (("train", train_rows), ("valid", valid)):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    # One step over one batch of all five samples: its loss is the untrained model's.
    settings = TrainSettings(iters=1, batch_size=5, eos_weight=8.0, steps_per_eval=1, steps_per_report=1, prefix_cache=False)
    result = train(mlx_dir, data, tmp_path / "adapters", settings)

    model, tokenizer = load(str(mlx_dir))
    weighted = _weighted_mean_loss(model, tokenizer._tokenizer, train_rows, 8.0)
    plain = _weighted_mean_loss(model, tokenizer._tokenizer, train_rows, 1.0)
    assert result.final_train_loss == pytest.approx(weighted, rel=1e-4)
    assert abs(weighted - plain) > 1e-3, "the end-of-turn token's weight must show in the loss"
    # Tokens trained on are counted as tokens, not as weight.
    enc = ev.encode_samples(train_rows, tokenizer._tokenizer, True)
    assert result.trained_tokens == sum(len(t) - target_window(len(t), o)[0] for t, o in enc)
    # The valid loss stays the plain mean that evaluation computes.
    es = ev.EvalSettings(mask_prompt=True, max_seq_length=512, batch_size=3)
    assert ev.summarize(ev.sample_losses(model, tokenizer, valid, "valid", es)).loss == pytest.approx(result.base_valid_loss, rel=1e-5)


def test_loss_norm_tokens_weighs_every_token_the_same(tiny_llama, tmp_path):
    """train.loss_norm: tokens: a batch's gradient is its mean-loss gradient times its weight over
    the average batch's weight (short batches step less, long ones more); the reported loss stays
    the batch's weighted mean."""
    import mlx.optimizers as optim
    from mlx.utils import tree_flatten
    from mlx_lm import convert

    from blogtune.train.batches import encode_split, split_weight
    from blogtune.train.loop import apply_fine_tune, load_model
    from blogtune.train.runner import Runner

    mlx_dir = tmp_path / "mlx"
    convert(str(tiny_llama), str(mlx_dir), dtype="float32")
    rows = _samples(6, 5)
    rows[0]["messages"][1]["content"] = "vacuum"  # a short answer in a batch of its own
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    eos_weight = 3.0

    def batch_grads(loss_norm: str):
        settings = TrainSettings(iters=1, batch_size=2, eos_weight=eos_weight, loss_norm=loss_norm, prefix_cache=False)
        model, tokenizer, _ = load_model(mlx_dir, settings)
        n_layers, _ = apply_fine_tune(model, settings)
        data = encode_split(path, tokenizer._tokenizer, True, 512)
        eos = sorted(tokenizer.eos_token_ids)
        by_length = sorted(range(len(data)), key=lambda i: len(data.tokens[i]))  # as training batches
        batches = [by_length[0:2], by_length[2:4], by_length[4:6]]
        norm = split_weight(data, eos, eos_weight) / len(batches) if loss_norm == "tokens" else None
        runner = Runner(model, optim.Adam(learning_rate=0.0), settings, n_layers, None, eos, norm)
        out = []
        for idx in batches:
            loss, _, grad = runner._train_step(runner._inputs(data, "train", idx), None, False)
            weight = float(runner._inputs(data, "train", idx)[-1].sum())
            out.append((loss.item(), weight, [np.array(g) for _, g in tree_flatten(grad)]))
        return out, norm

    per_batch, _ = batch_grads("batch")
    per_token, norm = batch_grads("tokens")
    # The average batch's weight, counted apart: the batches' own weights as training collates them.
    weights = [w for _, w, _ in per_batch]
    assert norm == pytest.approx(sum(weights) / len(weights))
    assert max(weights) > 1.5 * min(weights), "the batches must differ in weight for the test to mean anything"
    for (loss_b, w, grads_b), (loss_t, _, grads_t) in zip(per_batch, per_token, strict=True):
        assert loss_t == pytest.approx(loss_b, rel=1e-6)
        for gb, gt in zip(grads_b, grads_t, strict=True):
            want = gb * (w / norm)  # float32 rounding of two separate runs: relative to the scale
            np.testing.assert_allclose(gt, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())
        assert abs(w / norm - 1) > 0.1
