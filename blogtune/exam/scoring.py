"""Scoring exam items on an MLX model: multiple choice by log-likelihood, short answers by
batched greedy generation.

Multiple choice: each option is written into the original sentence, which the model "quotes"
as its answer to a prompt naming the post and section. The score of an option is the summed
log-probability of the tokens from the option on (the option and up to SUFFIX_TOKENS of the
sentence after it). Unnormalised on purpose: the four answers are the same sentence except the
span, so the shared tokens cancel; dividing by the option's token count would favour options
that happen to tokenise longer. The right context after the span (same text for all options)
is what lets the model reject an option that does not fit.

Speed: the prompt and the sentence up to the blank run once per item into a KV cache; the four
options continue from it as one batch; the output layer runs only on the scored rows, with
training's cross-entropy kernel (blogtune.training). Generation batches all prompts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from blogtune.exam.answers import has_loop

log = logging.getLogger(__name__)

SUFFIX_TOKENS = 8


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


def _head(model):
    inner = model.model
    if hasattr(model, "lm_head"):
        return model.lm_head
    return inner.embed_tokens.as_linear


def _common_prefix(seqs: Sequence[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs[1:]):
            return i
    return n


def score_item_options(model, seqs: Sequence[tuple[list[int], int, int]]) -> tuple[list[float], int]:
    """Summed log-probability of each option's window, sharing the prompt between the options.

    Tokens before the first one that differs between options are identical for all of them
    (their log-probabilities cancel in the comparison): they run once, into a KV cache that the
    options then continue from as one batch. Returns (scores, tokens run through the model).
    """
    import mlx.core as mx
    from mlx_lm.models.cache import KVCache, make_prompt_cache

    from blogtune.train import make_cross_entropy

    ce = make_cross_entropy()
    head = _head(model)
    toks = [s[0] for s in seqs]
    split = max(1, min(_common_prefix(toks), *(s[1] for s in seqs)))
    n_run = split - 1
    cache = make_prompt_cache(model)
    if split > 1:
        mx.eval(model.model(mx.array([toks[0][: split - 1]]), cache=cache))
    k = len(seqs)
    width = max(end for _, _, end in seqs) - (split - 1) - 1
    inputs = np.zeros((k, width), np.int32)
    rows, targets, owner = [], [], []
    for r, (t, _, end) in enumerate(seqs):
        cont = t[split - 1 : end - 1]
        inputs[r, : len(cont)] = cont
        rows.append(r * width + np.arange(len(cont)))
        targets.append(np.asarray(t[split:end], np.int32))
        owner.append(np.full(len(cont), r))
        n_run += len(cont)
    batched = []
    for c in cache:
        b = KVCache()
        if c.keys is not None:
            b.keys = mx.repeat(c.keys[..., : c.offset, :], k, axis=0)
            b.values = mx.repeat(c.values[..., : c.offset, :], k, axis=0)
            b.offset = c.offset
        batched.append(b)
    h = model.model(mx.array(inputs), cache=batched)
    flat = h.reshape(-1, h.shape[-1])[mx.array(np.concatenate(rows))]
    nll = ce(head(flat).astype(mx.float32), mx.array(np.concatenate(targets)))
    per_row = np.zeros(k)
    np.add.at(per_row, np.concatenate(owner), np.array(nll))
    return [-float(x) for x in per_row], n_run


@dataclass
class MCResult:
    chosen: int
    correct: bool
    scores: list[float]


def multiple_choice(model, tokenizer, items: Sequence[dict]) -> tuple[list[MCResult], dict]:
    """The option with the highest log-likelihood, per cloze item; plus throughput figures."""
    start = time.perf_counter()
    out, n_tokens = [], 0
    model.eval()
    for it in items:
        sc, n = score_item_options(model, option_sequences(it, tokenizer))
        n_tokens += n
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
    """Greedy answers for all prompts at once with mlx-lm's BatchGenerator (continuous batching);
    max_tokens: one limit for all, or one per prompt."""
    import mlx.core as mx
    from mlx_lm.generate import BatchGenerator

    start = time.perf_counter()
    eos = sorted(tokenizer.eos_token_ids)
    gen = BatchGenerator(
        model,
        stop_tokens=[[t] for t in eos],
        sampler=lambda logprobs: mx.argmax(logprobs, axis=-1),
        completion_batch_size=batch_size,
        prefill_batch_size=min(batch_size, 8),
    )
    limits = [int(max_tokens)] * len(prompts) if isinstance(max_tokens, int) else [int(m) for m in max_tokens]
    uids = gen.insert([list(p) for p in prompts], limits)
    toks: dict[int, list[int]] = {u: [] for u in uids}
    finish: dict[int, str] = {}
    while responses := gen.next_generated():
        for r in responses:
            if r.finish_reason != "stop":
                toks[r.uid].append(int(r.token))
            if r.finish_reason is not None:
                finish[r.uid] = r.finish_reason
    gen.close()
    out = []
    for u in uids:
        t = toks[u]
        out.append(Generation(tokenizer.decode(t), t, finish.get(u, "length"), has_loop(t)))
    seconds = time.perf_counter() - start
    n = sum(len(g.tokens) for g in out)
    return out, {"answers": len(out), "generated_tokens": n, "seconds": round(seconds, 2), "tokens_per_s": round(n / max(seconds, 1e-9), 1)}
