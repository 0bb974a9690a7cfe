"""Evaluation on a tiny random-weight model with the real SmolLM2 tokenizer.

Losses are checked two ways: against mlx-lm's own training loss (`default_loss` on the same
batch), and against an independent computation (HF chat template + plain forward pass +
manual cross-entropy over the assistant tokens).
"""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from blogtune.evaluate import generation as gen
from blogtune.evaluate import losses as ev
from blogtune.evaluate import pair
from blogtune.io_utils import atomic_write_jsonl

WORDS = "postgres index vacuum table query planner btree lock wal replica checkpoint".split()


def make_sample(
    aid: str, title: str, heading: str, part: int, parts: int, n_words: int, rng, system=None
) -> dict:
    user = f'Write part {part} of {parts} of my blog post "{title}", the section "{heading}".'
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user},
        {"role": "assistant", "content": " ".join(rng.choice(WORDS) for _ in range(n_words))},
    ]
    return {
        "messages": messages,
        "article_id": aid,
        "title": title,
        "heading": heading,
        "part": part,
        "parts": parts,
    }


def make_splits(system: str | None = "You are my blog.") -> dict[str, list[dict]]:
    rng = random.Random(0)
    train = [
        make_sample(f"2024/a{i}", f"Post {i}", "Intro", p, 2, 12 + 4 * p + i, rng, system)
        for i in range(5)
        for p in (1, 2)
    ]
    valid = [make_sample("2024/v1", "Valid post", "Body", 1, 1, 20, rng, system)]
    test = [
        make_sample("2024/t1", "<script>alert(1)</script>", "Setup", 1, 2, 15, rng, system),
        make_sample("2024/t1", "<script>alert(1)</script>", "Tuning", 2, 2, 40, rng, system),
        make_sample("2024/t2", "Other post", "Only", 1, 1, 9, rng, system),
    ]
    return {"train": train, "valid": valid, "test": test}


def make_lora_adapters(
    model_dir: Path, samples: list[dict], out: Path, steps: int = 2, mask_prompt=True
) -> Path:
    """mlx-lm's LoRA layers + a few Adam steps on `samples`, saved as mlx_lm.lora saves them."""
    import mlx.nn as nn
    import mlx.optimizers as optim
    from mlx.utils import tree_flatten
    from mlx_lm import load
    from mlx_lm.tuner.trainer import default_loss
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model, tokenizer = load(str(model_dir))
    model.freeze()
    lora = {"rank": 4, "scale": 10.0, "dropout": 0.0}
    linear_to_lora_layers(model, 2, lora)
    batch, rows = ev.pad_batch(ev.encode_samples(samples, tokenizer, mask_prompt), 256)
    step = nn.value_and_grad(model, lambda m, b, r: default_loss(m, b, r)[0])
    opt = optim.Adam(learning_rate=1e-3)
    for _ in range(steps):
        _, grads = step(model, mx.array(batch), mx.array(rows))
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state)
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters())))
    config = {
        "fine_tune_type": "lora",
        "num_layers": 2,
        "lora_parameters": lora,
        "mask_prompt": mask_prompt,
        "max_seq_length": 256,
    }
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def mlx_model(tiny_llama, tmp_path_factory) -> Path:
    from mlx_lm import convert

    out = tmp_path_factory.mktemp("eval_mlx") / "mlx"
    convert(str(tiny_llama), str(out), dtype="float32")
    return out


@pytest.fixture(scope="module")
def loaded(mlx_model):
    from mlx_lm import load

    return load(str(mlx_model))


@pytest.fixture(scope="module")
def splits() -> dict[str, list[dict]]:
    return make_splits()


@pytest.fixture(scope="module")
def adapters(mlx_model, splits, tmp_path_factory) -> Path:
    return make_lora_adapters(
        mlx_model, splits["train"][:4], tmp_path_factory.mktemp("eval_adapters") / "adapters"
    )


@pytest.fixture(scope="module")
def data_dir(splits, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("eval_data")
    for name, rows in splits.items():
        atomic_write_jsonl(d / f"{name}.jsonl", rows)
    return d


def manual_nll(model, hf_tokenizer, sample: dict, pad_target: bool) -> tuple[float, int]:
    """Independent: HF template, one plain forward pass, log-softmax in numpy, assistant tokens only."""
    tokens = list(hf_tokenizer.apply_chat_template(sample["messages"], tokenize=True, return_dict=False))
    prompt = hf_tokenizer.apply_chat_template(
        sample["messages"][:-1], tokenize=True, add_generation_prompt=True, return_dict=False
    )
    offset = len(prompt)
    assert tokens[:offset] == list(prompt)
    if pad_target:  # what mlx-lm's default_loss also scores: the zero padding after the sample
        tokens = tokens + [0]
    logits = np.array(model(mx.array(tokens)[None]).astype(mx.float32))[0]
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    targets = np.array(tokens[offset:])
    nll = -logp[np.arange(offset - 1, len(tokens) - 1), targets]
    return float(nll.sum()), len(targets)


# --------------------------------------------------------------------------- losses


def test_encoding_and_padding_match_mlx_lm_training(loaded, splits):
    from mlx_lm.tuner.datasets import CacheDataset, ChatDataset
    from mlx_lm.tuner.trainer import iterate_batches

    _, tokenizer = loaded
    samples = splits["train"][:4]
    encoded = ev.encode_samples(samples, tokenizer, mask_prompt=True)
    for (tokens, offset), s in zip(encoded, samples, strict=True):
        assert tokenizer.decode(tokens[offset:]).startswith(s["messages"][-1]["content"])
        assert tokenizer.decode(tokens).rstrip().endswith("<|im_end|>")
    dataset = CacheDataset(ChatDataset(samples, tokenizer, mask_prompt=True))
    ref_batch, ref_rows = next(iterate_batches(dataset, batch_size=4, max_seq_length=64))
    ordered = sorted(encoded, key=lambda e: len(e[0]))  # iterate_batches sorts by length
    batch, rows = ev.pad_batch(ordered, 64)
    np.testing.assert_array_equal(batch, np.array(ref_batch))
    np.testing.assert_array_equal(rows, np.array(ref_rows))


@pytest.mark.parametrize("truncate", [False, True])
def test_sample_losses_reproduce_training_default_loss(loaded, splits, truncate):
    from mlx_lm.tuner.trainer import default_loss

    model, tokenizer = loaded
    samples = splits["train"][:4]
    encoded = ev.encode_samples(samples, tokenizer, True)
    # Truncated: cut a few tokens into the shortest answer, so every sample keeps some scored tokens.
    max_seq_length = min(len(t) for t, _ in encoded) - 3 if truncate else 2048
    settings = ev.EvalSettings(mask_prompt=True, max_seq_length=max_seq_length, batch_size=2, score_pad_target=True)
    losses = ev.sample_losses(model, tokenizer, samples, "train", settings)
    batch, rows = ev.pad_batch(encoded, max_seq_length)
    ref_loss, ref_tokens = default_loss(model, mx.array(batch), mx.array(rows))
    summary = ev.summarize(losses)
    assert summary.tokens == int(ref_tokens.item())
    assert summary.loss == pytest.approx(ref_loss.item(), rel=1e-5)
    assert all(x.truncated for x in losses) == truncate


@pytest.mark.parametrize("with_adapters", [False, True])
@pytest.mark.parametrize("pad_target", [False, True])
def test_perplexity_is_exp_of_mean_token_nll_over_assistant_tokens(
    mlx_model, adapters, splits, smollm2_tokenizer_obj, with_adapters, pad_target
):
    from mlx_lm import load

    model, tokenizer = load(str(mlx_model), adapter_path=str(adapters) if with_adapters else None)
    samples = splits["test"]
    settings = ev.EvalSettings(mask_prompt=True, batch_size=2, score_pad_target=pad_target)
    losses = ev.sample_losses(model, tokenizer, samples, "test", settings)
    manual = [manual_nll(model, smollm2_tokenizer_obj, s, pad_target) for s in samples]
    for got, (nll, n) in zip(losses, manual, strict=True):
        assert got.tokens == n
        assert got.nll == pytest.approx(nll, rel=1e-4)
    total_nll, total_tokens = sum(m[0] for m in manual), sum(m[1] for m in manual)
    summary = ev.summarize(losses)
    assert summary.perplexity == pytest.approx(math.exp(total_nll / total_tokens), rel=1e-4)


def test_unmasked_prompt_scores_every_token(loaded, splits):
    model, tokenizer = loaded
    s = splits["valid"]
    masked = ev.sample_losses(model, tokenizer, s, "valid", ev.EvalSettings(mask_prompt=False))
    ((tokens, offset),) = ev.encode_samples(s, tokenizer, mask_prompt=False)
    assert offset == 0 and masked[0].tokens == len(tokens) - 1  # targets 1..len-1, as training scores them


def test_plain_text_samples_are_scored_whole_like_training(loaded):
    _, tokenizer = loaded
    ((tokens, offset),) = ev.encode_samples([{"text": "# Title\n\nBody", "article_id": "a"}], tokenizer, True)
    assert offset == 0 and tokens[-1] == tokenizer.eos_token_id  # TextDataset appends EOS


def test_per_article_aggregation_is_token_weighted():
    def loss(aid, tokens, nll, split="test"):
        return ev.SampleLoss(split, 0, aid, f"title {aid}", "h", tokens + 5, tokens, nll, False)

    rows = [loss("a", 10, 20.0), loss("a", 30, 30.0), loss("b", 5, 5.0), loss("a", 4, 4.0, "valid")]
    groups = ev.per_article(rows)
    title, a = groups[("test", "a")]
    assert title == "title a" and a.samples == 2 and a.tokens == 40
    assert a.loss == pytest.approx(50.0 / 40)  # not the mean of per-sample means (1.5)
    assert a.perplexity == pytest.approx(math.exp(1.25))
    assert groups[("valid", "a")][1].tokens == 4 and ("test", "b") in groups
    assert ev.summarize(rows).loss == pytest.approx(59.0 / 49)
    assert ev.summarize([]).loss is None and ev.summarize([]).perplexity is None
    assert ev.relative_change(2.0, 1.5) == pytest.approx(-0.25) and ev.relative_change(None, 1.0) is None


def test_train_article_sample_is_seeded_and_order_free(splits):
    train = splits["train"]
    picked = ev.pick_train_articles(train, 2, seed=3)
    assert len(picked) == 2 and picked == ev.pick_train_articles(list(reversed(train)), 2, seed=3)
    assert ev.pick_train_articles(train, 99, seed=0) == sorted({s["article_id"] for s in train})
    assert ev.pick_train_articles(train, 0, seed=0) == []


def test_training_settings_come_from_adapter_config(adapters, tmp_path):
    assert ev.read_training_settings(adapters) == {"mask_prompt": True, "max_seq_length": 256}
    assert ev.read_training_settings(tmp_path) == {"mask_prompt": False, "max_seq_length": 2048}


# --------------------------------------------------------------------------- prompts and generation


def test_heldout_prompts_reuse_the_training_wording(splits):
    prompts = gen.heldout_prompts(splits["test"], 2)
    assert [p.article_id for p in prompts] == ["2024/t1", "2024/t2"]  # one per article first
    first = prompts[0]
    assert first.user == splits["test"][0]["messages"][1]["content"]
    assert first.messages == splits["test"][0]["messages"][:2]  # system + user, no answer
    assert first.reference == splits["test"][0]["messages"][2]["content"]
    assert len(gen.heldout_prompts(splits["test"], 5)) == 3 and gen.heldout_prompts(splits["test"], 0) == []
    system = gen.system_message(splits["test"])
    (cfg,) = gen.config_prompts(["What is WAL?"], system, chat=True)
    assert cfg.messages == [system, {"role": "user", "content": "What is WAL?"}]
    text = gen.heldout_prompts([{"text": "# Title\n\nBody text", "article_id": "x"}], 1)[0]
    assert text.text == "# Title\n\n" and text.reference == "Body text"


def test_template_tokens_are_found_as_text_and_as_ids(loaded):
    _, tokenizer = loaded
    specials = gen.template_token_texts(tokenizer)
    assert specials[1] == "<|im_start|>" and specials[2] == "<|im_end|>" and specials[0] == "<|endoftext|>"
    assert gen.find_template_tokens("plain answer <b>bold</b>", [10_000], specials) == []
    assert gen.find_template_tokens("hi <|im_start|>user", [], specials) == ["<|im_start|>"]
    assert gen.find_template_tokens("", [0], specials) == ["<|endoftext|>"]


def test_answer_that_hits_the_limit(loaded):
    model, tokenizer = loaded
    tokens = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, return_dict=False
    )
    a = gen.generate_answer(model, tokenizer, tokens, max_tokens=5, temperature=0.0, top_p=1.0, seed=0)
    assert a.finish == "length" and a.hit_limit and a.tokens == 5 and a.stop_token is None


def test_answer_that_stops_on_a_stop_token(loaded):
    model, tokenizer = loaded
    tokens = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, return_dict=False
    )
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_sampler

    mx.random.seed(5)  # the same sampled sequence generate_answer(seed=5) will draw
    steps = generate_step(mx.array(tokens), model, max_tokens=8, sampler=make_sampler(temp=1.0))
    sampled = [int(t) for t, _ in itertools.islice(steps, 8)]
    stop_at = next(i for i in range(1, 8) if sampled[i] not in sampled[:i])
    saved = set(tokenizer.eos_token_ids)
    tokenizer.eos_token_ids = saved | {sampled[stop_at]}  # pretend this token ends the turn
    try:
        a = gen.generate_answer(model, tokenizer, tokens, max_tokens=20, temperature=1.0, top_p=1.0, seed=5)
    finally:
        tokenizer.eos_token_ids = saved
    assert a.finish == "stop" and not a.hit_limit and a.tokens == stop_at
    assert a.stop_token == tokenizer.convert_ids_to_tokens(sampled[stop_at])


def test_answer_with_raw_template_tokens_is_flagged(mlx_model):
    from mlx_lm import load

    model, tokenizer = load(str(mlx_model))
    norm = model.model.norm
    norm.weight = mx.zeros_like(norm.weight)  # all logits 0: greedy picks id 0, <|endoftext|>
    tokens = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, return_dict=False
    )
    a = gen.generate_answer(model, tokenizer, tokens, max_tokens=4, temperature=0.0, top_p=1.0, seed=0)
    assert a.template_tokens == ["<|endoftext|>"] and "<|endoftext|>" in a.text and a.hit_limit


def test_seeded_sampling_is_identical_across_calls(loaded):
    model, tokenizer = loaded
    tokens = tokenizer.encode("Once upon a time")
    runs = [
        gen.generate_answer(model, tokenizer, tokens, 8, temperature=1.0, top_p=0.9, seed=7) for _ in range(2)
    ]
    other = gen.generate_answer(model, tokenizer, tokens, 8, temperature=1.0, top_p=0.9, seed=8)
    assert runs[0].text == runs[1].text and runs[0].tokens == 8
    assert other.text != runs[0].text



def test_greedy_answers_are_decoded_together_and_equal_one_by_one(mlx_model):
    """The default (temperature 0) decodes all prompts in one batch: the same answers, stop
    tokens and limits as generating each alone (one prompt made to stop early, the others not)."""
    from mlx_lm import load

    model, tokenizer = load(str(mlx_model))
    for layer in (model.model.embed_tokens, getattr(model, "lm_head", None)):  # varied greedy tokens
        if layer is not None:
            layer.weight = mx.random.normal(layer.weight.shape, key=mx.random.key(3))
    # Plain-text prompts with different last tokens: a random tiny model's answer hangs on those.
    starts = ["Once upon a time", "The btree index", "vacuum the table now", "A planner"]
    prompts = [gen.Prompt(f"p{i}", "config", q, text=q) for i, q in enumerate(starts)]
    tokens = [gen.prompt_tokens(tokenizer, p) for p in prompts]
    free = gen.batch_generate(model, tokenizer, tokens, 9)
    others = {t for d in free[:1] + free[2:] for t in d.tokens}
    at = next(i for i, t in enumerate(free[1].tokens) if t not in others and t not in free[1].tokens[:i])
    saved = set(tokenizer.eos_token_ids)
    tokenizer.eos_token_ids = saved | {free[1].tokens[at]}  # pretend this token of prompt 1 ends the turn
    try:
        alone = [gen.generate_answer(model, tokenizer, t, 9, 0.0, 1.0, 0) for t in tokens]
        together = gen.generate_all(model, tokenizer, prompts, ev.EvalSettings(max_tokens=9, temperature=0.0), "test")
    finally:
        tokenizer.eos_token_ids = saved
    assert alone[1].finish == "stop" and alone[1].tokens == at
    assert all(a.finish == "length" for a in alone[:1] + alone[2:])
    for a, b in zip(alone, together, strict=True):
        assert (b.text, b.tokens, b.finish, b.stop_token) == (a.text, a.tokens, a.finish, a.stop_token)

# --------------------------------------------------------------------------- whole run


def test_evaluate_model_pair(mlx_model, adapters, data_dir, splits):
    settings = ev.EvalSettings(
        mask_prompt=True,
        max_seq_length=256,
        batch_size=3,
        train_sample_articles=2,
        heldout_prompts=2,
        prompts=["What is <b>VACUUM</b>?"],
        max_tokens=6,
    )
    result = pair.evaluate_model_pair(
        mlx_model, adapters, {s: data_dir / f"{s}.jsonl" for s in splits}, settings
    )
    m = result.metrics
    assert set(m["splits"]) == {"test", "valid", "train_sample"}
    assert m["splits"]["test"]["samples"] == 3 and m["splits"]["test"]["articles"] == 2
    assert m["splits"]["train_sample"]["articles"] == 2 and len(m["train_sample_articles"]) == 2
    for split in m["splits"].values():
        for which in ("base", "finetuned"):
            assert split[which]["perplexity"] == pytest.approx(math.exp(split[which]["loss"]))
    # The adapters were trained on the training split: its loss went down.
    assert m["splits"]["train_sample"]["finetuned"]["loss"] < m["splits"]["train_sample"]["base"]["loss"]
    assert m["data"]["train"]["samples"] == 10 and m["data"]["test"]["truncated"] == 0
    json.dumps(m)  # serialisable as is

    test_rows = [r for r in result.per_article if r["split"] == "test"]
    assert {r["article_id"] for r in test_rows} == {"2024/t1", "2024/t2"}
    assert sum(r["tokens"] for r in test_rows) == m["splits"]["test"]["tokens"]

    gens = result.generations
    assert [g["source"] for g in gens] == ["config", "heldout", "heldout"]
    assert gens[1]["title"] == "<script>alert(1)</script>" and gens[1]["reference"]
    for g in gens:
        for which in ("base", "finetuned"):
            assert g[which]["finish"] in {"stop", "length"} and g[which]["tokens"] <= 6
    assert m["generation"]["base"]["answers"] == 3


def test_empty_test_split_is_reported_not_fatal(mlx_model, adapters, data_dir, tmp_path):
    empty = tmp_path / "test.jsonl"
    empty.write_text("")
    settings = ev.EvalSettings(mask_prompt=True, train_sample_articles=0, max_tokens=2)
    files = {"train": data_dir / "train.jsonl", "valid": data_dir / "valid.jsonl", "test": empty}
    m = pair.evaluate_model_pair(mlx_model, adapters, files, settings).metrics
    assert m["splits"]["test"]["samples"] == 0 and m["splits"]["test"]["base"]["loss"] is None
    assert m["splits"]["train_sample"]["samples"] == 0 and m["generation"]["base"]["answers"] == 0
