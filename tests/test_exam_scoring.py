"""Exam scoring on a tiny real model: multiple choice and exact match recomputed independently."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from test_evaluate import make_lora_adapters
from test_exam_items import BLOG

from blogtune.exam import answers, scoring
from blogtune.exam.items import build_cloze_items
from blogtune.exam.run import ExamSettings, run_exam


@pytest.fixture(scope="module")
def mlx_dir(tiny_llama, tmp_path_factory):
    from mlx_lm import convert

    out = tmp_path_factory.mktemp("exam_mlx") / "mlx"
    convert(str(tiny_llama), str(out), dtype="float32")
    return out


@pytest.fixture(scope="module")
def loaded(mlx_dir):
    from mlx_lm import load

    return load(str(mlx_dir))


@pytest.fixture(scope="module")
def exam_items():
    return [it.to_dict() for it in build_cloze_items(BLOG, seed=1, max_items=12, max_per_article=3)]


def _plain_logprob(model, tokens: list[int], first: int, end: int) -> float:
    """One plain forward over the whole sequence (no cache, no CPU patches), log-softmax in numpy."""
    logits = np.array(model(mx.array(tokens[: end - 1])[None]).astype(mx.float32))[0].astype(np.float64)
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    return float(sum(logp[p - 1, tokens[p]] for p in range(first, end)))


def test_multiple_choice_matches_an_independent_computation(loaded, exam_items):
    model, tokenizer = loaded
    results, speed = scoring.multiple_choice(model, tokenizer, exam_items)
    assert speed["items"] == len(exam_items) and speed["tokens"] > 0
    correct = 0
    for it, res in zip(exam_items, results, strict=True):
        seqs = scoring.option_sequences(it, tokenizer)
        for (toks, _, end), option in zip(seqs, it["options"], strict=True):
            assert option in tokenizer.decode(toks[: end])
        # Independent: score from the first token where the options differ to the window end.
        first = next(i for i in range(min(len(s[0]) for s in seqs)) if len({s[0][i] for s in seqs}) > 1)
        ref = [_plain_logprob(model, t, first, end) for t, _, end in seqs]
        np.testing.assert_allclose(res.scores, ref, rtol=1e-4, atol=1e-3)
        assert res.chosen == int(np.argmax(ref))
        correct += res.chosen == it["answer_index"]
    assert sum(r.correct for r in results) == correct



def test_multiple_choice_scores_do_not_depend_on_how_items_are_batched(loaded, exam_items, monkeypatch):
    """Items are scored 16 at a time, left-padded side by side: groups of 5 (and of 1) give the
    same scores, in item order."""
    model, tokenizer = loaded
    together, _ = scoring.multiple_choice(model, tokenizer, exam_items)
    for size in (5, 1):
        monkeypatch.setattr(scoring, "MC_BATCH_ITEMS", size)
        apart, _ = scoring.multiple_choice(model, tokenizer, exam_items)
        for a, b in zip(apart, together, strict=True):
            np.testing.assert_allclose(a.scores, b.scores, rtol=1e-4, atol=1e-3)
            assert a.chosen == b.chosen

def test_batched_greedy_answers_equal_one_by_one_generation(loaded, exam_items):
    from mlx_lm.generate import stream_generate
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer = loaded
    prompts = [scoring.prompt_tokens(tokenizer, it["question"]) for it in exam_items[:5]]
    gens, speed = scoring.greedy_answers(model, tokenizer, prompts, max_tokens=12, batch_size=4)
    assert speed["answers"] == 5
    for p, g in zip(prompts, gens, strict=True):
        toks, finish = [], "length"
        for r in stream_generate(model, tokenizer, mx.array(p), max_tokens=12, sampler=make_sampler(temp=0.0)):
            if r.finish_reason == "stop":
                finish = "stop"
                break
            toks.append(r.token)
        assert g.tokens == toks and g.finish == finish
        text = tokenizer.decode(toks)
        assert answers.exact_match(g.text, text) and g.loop == answers.has_loop(toks)


def test_run_exam_base_vs_adapters(mlx_dir, exam_items, tmp_path):
    from test_evaluate import make_splits

    adapters = make_lora_adapters(mlx_dir, make_splits()["train"][:4], tmp_path / "adapters", steps=3)
    metrics, rows = run_exam(mlx_dir, adapters, exam_items, ExamSettings(max_tokens=6, generate_items=4, batch_size=4))
    assert len(rows) == len(exam_items)
    mc = metrics["splits"]["train"]["multiple_choice"]["cloze"]
    n_train = sum(it["split"] == "train" for it in exam_items)
    assert mc["items"] == n_train and mc["chance"] == 0.25
    for which in ("base", "finetuned"):
        k = sum(r[which]["mc_correct"] for r in rows if r["split"] == "train")
        assert mc[which]["k"] == k
        asked = [r for r in rows if "finish" in r[which]]
        assert len(asked) == 4
        assert all(r["budget"] >= 6 and r[which]["tokens"] <= r["budget"] for r in asked)
        assert metrics["stop_rate"][which]["k"] == sum(r[which]["finish"] == "stop" for r in asked)
        per_lang = metrics["stop_rate_by_lang"]
        assert sum(v[which]["n"] for v in per_lang.values()) == len(asked)
        for lang, v in per_lang.items():
            assert v[which]["k"] == sum(r[which]["finish"] == "stop" for r in asked if r["lang"] == lang)
        assert all(r[which]["exact"] == answers.exact_match(r[which]["answer"], r["answer"]) for r in asked)
    assert mc["lift"]["lift"] == pytest.approx(mc["finetuned"]["rate"] - mc["base"]["rate"])
    assert any(r["base"]["mc_scores"] != r["finetuned"]["mc_scores"] for r in rows)  # adapters applied


def test_greedy_answers_honour_a_budget_per_prompt(loaded, exam_items):
    model, tokenizer = loaded
    prompts = [scoring.prompt_tokens(tokenizer, it["question"]) for it in exam_items[:3]]
    one, _ = scoring.greedy_answers(model, tokenizer, prompts, max_tokens=10, batch_size=4)
    per, _ = scoring.greedy_answers(model, tokenizer, prompts, max_tokens=[2, 10, 5], batch_size=4)
    for g, full, limit in zip(per, one, [2, 10, 5], strict=True):
        assert g.tokens == full.tokens[:limit]  # greedy: a shorter budget is a prefix
        assert g.finish == ("stop" if full.finish == "stop" and len(full.tokens) < limit else "length")


def test_answer_budget_grows_with_the_reference(loaded):
    import math

    from blogtune.exam.run import answer_budget

    _, tokenizer = loaded
    settings = ExamSettings(max_tokens=8, answer_room=1.5)
    assert answer_budget(tokenizer, "pg_tidy", settings) == 8  # short: the floor
    long_ref = "```sql\n" + "\n".join(f"CREATE INDEX i{k} ON t (c{k});" for k in range(12)) + "\n```"
    n_ref = len(tokenizer._tokenizer.encode(long_ref, add_special_tokens=False))
    assert n_ref > 8 and answer_budget(tokenizer, long_ref, settings) == math.ceil(1.5 * n_ref)



def test_short_answers_leave_out_long_references(loaded):
    from blogtune.exam.run import reference_tokens, short_answer_items

    _, tokenizer = loaded
    section = " ".join(f"Step {k}: run pg_tidy --min-bloat {k} on table t{k}." for k in range(12))
    items = [
        {"item_id": "long", "source": "view", "split": "train", "answer": section},
        {"item_id": "short", "source": "view", "split": "train", "answer": "pg_tidy --dry-run"},
        {"item_id": "cloze", "source": "cloze", "split": "train", "answer": "30"},
    ]
    cap = reference_tokens(tokenizer, section) - 1
    got = short_answer_items(tokenizer, items, ExamSettings(generate_items=3, heldout_items=0, max_reference_tokens=cap))
    assert [it["item_id"] for it in got] == ["short", "cloze"]
    unlimited = ExamSettings(generate_items=3, heldout_items=0, max_reference_tokens=None)
    assert [it["item_id"] for it in short_answer_items(tokenizer, items, unlimited)] == ["long", "short", "cloze"]

def test_generation_items_keep_room_for_heldout_posts():
    from blogtune.exam.run import pick_generation_items

    items = (
        [{"item_id": f"c{k}", "source": "cloze", "split": "train"} for k in range(4)]
        + [{"item_id": f"h{k}", "source": "cloze", "split": "test"} for k in range(3)]
        + [{"item_id": f"q{k}", "source": "view", "split": "train"} for k in range(4)]
    )
    got = [it["item_id"] for it in pick_generation_items(items, 7, heldout=2)]
    assert got == ["q0", "q1", "q2", "q3", "c0", "h0", "h1"]  # QA, then cloze, held-out posts kept
    assert [it["item_id"] for it in pick_generation_items(items, 3, heldout=0)] == ["q0", "q1", "q2"]
    assert len(pick_generation_items(items, 20, heldout=8)) == len(items)
