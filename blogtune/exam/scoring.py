"""Scoring exam items on an MLX model: multiple choice by log-likelihood, short answers by
batched greedy generation.

Multiple choice: each option is written into the original sentence, which the model "quotes"
as its answer to a prompt naming the post and section. The score of an option is the summed
log-probability of the tokens from the option on (the option and up to SUFFIX_TOKENS of the
sentence after it). Unnormalised on purpose: the four answers are the same sentence except the
span, so the shared tokens cancel; dividing by the option's token count would favour options
that happen to tokenise longer. The right context after the span (same text for all options)
is what lets the model reject an option that does not fit.

Speed: the prompt and the sentence up to the blank run once per item into a KV cache, 16 items
side by side; the four options of each continue from it, all in one batch; the output layer runs
only on the scored rows, with training's cross-entropy kernel (blogtune.train). Generation
batches all prompts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from blogtune.evaluate import batch_generate
from blogtune.exam.answers import has_loop

log = logging.getLogger(__name__)

SUFFIX_TOKENS = 8
MC_BATCH_ITEMS = 16  # items whose options are scored in one batch (x4 rows)


def mc_messages(item: dict) -> list[dict]:
    """The multiple-choice prompt: names the post and section, never shows the options."""
    if item.get("lang") == "zh":
        user = f"请引用我的博客文章《{item['title']}》“{item['heading']}”一节中的一句话。"
    else:
        user = f'Quote a sentence from my blog post "{item["title"]}", section "{item["heading"]}".'
    return [{"role": "user", "content": user}]


def _hf(tokenizer):
    return getattr(tokenizer, "_tokenizer", tokenizer)


def option_sequences(item: dict, tokenizer, suffix_tokens: int = SUFFIX_TOKENS) -> list[tuple[list[int], int, int]]:
    """(tokens, first scored target index, end) per option of a cloze item."""
    hf = _hf(tokenizer)
    sentence, answer = item["sentence"], item["answer"]
    at = sentence.index(answer)
    left, right = sentence[:at], sentence[at + len(answer) :]
    out = []
    for option in item["options"]:
        messages = [*mc_messages(item), {"role": "assistant", "content": left + option + right}]
        text = hf.apply_chat_template(messages, tokenize=False)
        start = text.rindex(left + option + right) + len(left)
        enc = hf(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        first = next(i for i, (_, e) in enumerate(offsets) if e > start)
        opt_end = start + len(option)
        last_opt = max(i for i, (s, _) in enumerate(offsets) if s < opt_end)
        end = min(len(ids), last_opt + 1 + suffix_tokens)
        out.append((list(ids), max(first, 1), end))
    return out


def _common_prefix(seqs: Sequence[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs[1:]):
            return i
    return n


def score_items_options(model, items_seqs: Sequence[Sequence[tuple[list[int], int, int]]]) -> tuple[list[list[float]], int]:
    """_score_items_options, with gemma2's attention taking batch caches' masks."""
    from blogtune.evaluate.batch_masks import batch_masks_fixed

    with batch_masks_fixed(model):
        return _score_items_options(model, items_seqs)


def _score_items_options(model, items_seqs: Sequence[Sequence[tuple[list[int], int, int]]]) -> tuple[list[list[float]], int]:
    """Summed log-probability of each option's window, for several items at once.

    Per item, the tokens before the first one that differs between its options are identical
    for all of them (their log-probabilities cancel in the comparison): they run once, into a KV
    cache, the items' prompts side by side (left-padded, mlx-lm's batch caches mask the padding).
    The cache rows are then repeated once per option, and every option of every item continues
    from its own item's row in one batch. Returns (scores per item, tokens run through the model).
    """
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    from blogtune.train import make_cross_entropy, output_head

    ce = make_cross_entropy()
    head = output_head(model)
    body = model.model if head is not None else model  # None: whole-model logits, rows picked after
    prefixes, conts, n_run = [], [], 0
    for seqs in items_seqs:
        toks = [s[0] for s in seqs]
        split = max(1, min(_common_prefix(toks), *(s[1] for s in seqs)))
        prefixes.append(toks[0][: split - 1])
        # Each option continues from the last shared token; it scores its targets split..end-1.
        conts.append([(t[split - 1 : end - 1], t[split:end]) for t, _, end in seqs])
        n_run += split - 1 + sum(len(c) for c, _ in conts[-1])
    longest = max(len(p) for p in prefixes)
    pads = [longest - len(p) for p in prefixes]
    cache = [type(layer).merge([layer] * len(prefixes)) for layer in make_prompt_cache(model)]
    for c in cache:
        c.prepare(left_padding=pads)
    if longest:
        padded = np.zeros((len(prefixes), longest), np.int32)
        for r, p in enumerate(prefixes):
            padded[r, pads[r] :] = p
        body(mx.array(padded), cache=cache)
    owner = [i for i, c in enumerate(conts) for _ in c]  # cache row of each option
    for c in cache:
        c.filter(mx.array(owner))
    flat = [c for item in conts for c in item]
    width = max(len(x) for x, _ in flat)
    inputs = np.zeros((len(flat), width), np.int32)
    rows, targets = [], []
    for r, (x, y) in enumerate(flat):
        inputs[r, : len(x)] = x  # right padding: causal, so it never reaches the scored rows
        rows.append(r * width + np.arange(len(x)))
        targets.append(np.asarray(y, np.int32))
    h = body(mx.array(inputs), cache=cache)
    picked = h.reshape(-1, h.shape[-1])[mx.array(np.concatenate(rows))]
    logits = head(picked) if head is not None else picked
    nll = np.array(ce(logits.astype(mx.float32), mx.array(np.concatenate(targets))))
    per_row = np.zeros(len(flat))
    np.add.at(per_row, np.repeat(np.arange(len(flat)), [len(x) for x, _ in flat]), nll)
    out, at = [], 0
    for item in conts:
        out.append([-float(x) for x in per_row[at : at + len(item)]])
        at += len(item)
    return out, n_run


@dataclass
class MCResult:
    chosen: int
    correct: bool
    scores: list[float]


def multiple_choice(model, tokenizer, items: Sequence[dict]) -> tuple[list[MCResult], dict]:
    """The option with the highest log-likelihood, per cloze item; plus throughput figures."""
    start = time.perf_counter()
    n_tokens = 0
    model.eval()
    seqs = [option_sequences(it, tokenizer) for it in items]
    # Items of similar length share a batch (less padding); results go back in item order.
    order = sorted(range(len(items)), key=lambda i: len(seqs[i][0][0]))
    scores: dict[int, list[float]] = {}
    for at in range(0, len(order), MC_BATCH_ITEMS):
        group = order[at : at + MC_BATCH_ITEMS]
        got, n = score_items_options(model, [seqs[i] for i in group])
        n_tokens += n
        scores.update(zip(group, got, strict=True))
    out = []
    for i, it in enumerate(items):
        sc = scores[i]
        chosen = int(np.argmax(sc))
        out.append(MCResult(chosen, chosen == it["answer_index"], [round(x, 4) for x in sc]))
    seconds = time.perf_counter() - start
    return out, {"items": len(items), "tokens": n_tokens, "seconds": round(seconds, 2), "tokens_per_s": round(n_tokens / max(seconds, 1e-9), 1)}


@dataclass
class Generation:
    text: str
    tokens: list[int] = field(default_factory=list)
    finish: str = "length"  # "stop": ended on an end-of-turn/EOS token; "length": hit its budget
    loop: bool = False


def prompt_tokens(tokenizer, question: str, system: str | None = None) -> list[int]:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    return list(_hf(tokenizer).apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))


def greedy_answers(
    model, tokenizer, prompts: Sequence[list[int]], max_tokens: int | Sequence[int], batch_size: int = 32
) -> tuple[list[Generation], dict]:
    """Greedy answers for all prompts at once (blogtune.evaluate's batch_generate); max_tokens:
    one limit for all, or one per prompt."""
    start = time.perf_counter()
    decoded = batch_generate(model, tokenizer, prompts, max_tokens, batch_size)
    out = [Generation(tokenizer.decode(d.tokens), d.tokens, d.finish, has_loop(d.tokens)) for d in decoded]
    seconds = time.perf_counter() - start
    n = sum(len(g.tokens) for g in out)
    return out, {"answers": len(out), "generated_tokens": n, "seconds": round(seconds, 2), "tokens_per_s": round(n / max(seconds, 1e-9), 1)}
