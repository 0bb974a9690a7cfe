"""The output layer applied to scored rows only (blogtune.train.head) equals the whole model's
logits, also for gemma2's final logit soft-capping; evaluation's losses and the exam's
multiple-choice scores use it and agree with the whole-model computation. gemma2 with
grouped-query attention also scores and generates in batches (blogtune.evaluate.batch_masks)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from test_exam_items import BLOG
from test_exam_scoring import _plain_logprob

import blogtune.evaluate.losses as losses
from blogtune.exam import scoring
from blogtune.exam.items import build_cloze_items
from blogtune.train.head import PROBE, output_head, projection

# A small cap on purpose: with random weights the logits are small, and capping them at 30 (the
# real default) would change them too little for a missing cap to fail the comparisons below.
SOFTCAP = 0.5


@pytest.fixture(scope="module")
def gemma2(tiny_model_factory, tmp_path_factory):
    from mlx_lm import convert, load

    # Grouped-query attention (4 heads, 2 kv heads), as gemma-2-2b: batch caches' masks need
    # blogtune.evaluate.batch_masks there.
    hf = tiny_model_factory("gemma2", head_dim=32, final_logit_softcapping=SOFTCAP)
    out = tmp_path_factory.mktemp("gemma2_mlx") / "mlx"
    convert(str(hf), str(out), dtype="float32")
    return load(str(out))


@pytest.fixture(scope="module")
def llama(tiny_llama, tmp_path_factory):
    from mlx_lm import convert, load

    out = tmp_path_factory.mktemp("llama_mlx") / "mlx"
    convert(str(tiny_llama), str(out), dtype="float32")
    return load(str(out))


@pytest.mark.parametrize("name", ["llama", "gemma2"])
def test_head_of_the_body_is_the_model(name, request):
    model, _ = request.getfixturevalue(name)
    head = output_head(model)
    assert head is not None
    x = mx.array(PROBE)
    np.testing.assert_allclose(np.array(head(model.model(x))), np.array(model(x)), rtol=1e-5, atol=1e-5)


def test_the_softcap_is_part_of_the_head(gemma2):
    """The bare projection is not gemma2's output: without the cap, scores would be wrong."""
    model, _ = gemma2
    x = mx.array(PROBE)
    bare = np.array(projection(model)(model.model(x)))
    assert np.abs(bare - np.array(model(x))).max() > 0.1


def test_a_model_built_otherwise_gets_no_head():
    class Plain:
        def __call__(self, x):
            return x

    assert output_head(Plain()) is None


def test_evaluation_losses_equal_whole_model_logits(gemma2, monkeypatch):
    model, tokenizer = gemma2
    samples = [
        {
            "messages": [
                {"role": "user", "content": f"Write part {i} of my post"},
                {"role": "assistant", "content": text},
            ]
        }
        for i, text in enumerate(
            ["A short answer.", "Run `pg_tidy --dry-run` before the upgrade, then check the log.", "x " * 40]
        )
    ]
    settings = losses.EvalSettings(mask_prompt=True, max_seq_length=64, batch_size=2)
    fast = losses.sample_losses(model, tokenizer, samples, "valid", settings)
    monkeypatch.setattr(losses, "output_head", lambda model: None)  # whole-model logits
    whole = losses.sample_losses(model, tokenizer, samples, "valid", settings)
    assert [x.tokens for x in fast] == [x.tokens for x in whole] and all(x.tokens > 0 for x in fast)
    np.testing.assert_allclose([x.nll for x in fast], [x.nll for x in whole], rtol=1e-4)


def test_multiple_choice_on_gemma2_matches_an_independent_computation(gemma2):
    model, tokenizer = gemma2
    items = [it.to_dict() for it in build_cloze_items(BLOG, seed=1, max_items=4, max_per_article=2)]
    results, _ = scoring.multiple_choice(model, tokenizer, items)
    for it, res in zip(items, results, strict=True):
        seqs = scoring.option_sequences(it, tokenizer)
        first = next(i for i in range(min(len(s[0]) for s in seqs)) if len({s[0][i] for s in seqs}) > 1)
        ref = [_plain_logprob(model, t, first, end) for t, _, end in seqs]
        np.testing.assert_allclose(res.scores, ref, rtol=1e-4, atol=1e-3)


def test_gemma2_gqa_generates_in_batches_like_one_by_one(gemma2):
    """Without blogtune.evaluate.batch_masks, mlx-lm's gemma2 fails on 3+ left-padded prompts."""
    from mlx_lm.generate import stream_generate
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer = gemma2
    assert model.layers[0].self_attn.repeats > 1
    questions = [
        "What is pg_tidy?",
        "Which flag does a dry run?",
        "How do I roll the upgrade back safely?",
        "Why?",
    ]
    prompts = [scoring.prompt_tokens(tokenizer, q) for q in questions]
    gens, _ = scoring.greedy_answers(model, tokenizer, prompts, max_tokens=8, batch_size=4)
    for p, g in zip(prompts, gens, strict=True):
        toks = []
        for r in stream_generate(model, tokenizer, mx.array(p), max_tokens=8, sampler=make_sampler(temp=0.0)):
            if r.finish_reason == "stop":
                break
            toks.append(r.token)
        assert g.tokens == toks
    assert model.layers[0].self_attn.__class__.__call__.__name__ == "__call__"  # restored after
