"""Before/after evaluation: base model vs base+adapters on held-out and training articles.

Losses are computed exactly like mlx-lm training computes them: samples are rendered and
prompt-masked by mlx-lm's own dataset classes, padded and truncated like `iterate_batches`,
and scored on the targets training scores (blogtune.loss_window). Unlike mlx-lm's `evaluate`, every sample is
scored (no dropped remainder batch) and sums are kept per sample, so per-article numbers and
a token-weighted mean (perplexity = exp(mean token loss)) come out of one pass.

Generations answer the same prompts with both models under identical seeded sampling and
record how each answer ended (stop token or token limit) and any raw template tokens in it.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
import types
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

PAD_TO = 32  # mlx-lm's iterate_batches pads batches to 1 + a multiple of 32
MLX_LM_DEFAULT_MAX_SEQ_LENGTH = 2048
SPLITS = ("test", "valid", "train_sample")
MODELS = ("base", "finetuned")


# --------------------------------------------------------------------------- records


@dataclass
class SampleLoss:
    """Summed token NLL of one sample, with what it belongs to."""

    split: str
    index: int  # line number in the split file
    article_id: str
    title: str
    heading: str
    seq_tokens: int  # rendered length before truncation
    tokens: int  # tokens scored
    nll: float  # sum of token NLLs (nats)
    truncated: bool


@dataclass
class LossSummary:
    samples: int
    tokens: int
    nll: float

    @property
    def loss(self) -> float | None:
        return self.nll / self.tokens if self.tokens else None

    @property
    def perplexity(self) -> float | None:
        return perplexity(self.loss)

    def as_dict(self) -> dict:
        return {
            "samples": self.samples,
            "tokens": self.tokens,
            "loss": self.loss,
            "perplexity": self.perplexity,
        }


@dataclass
class Prompt:
    """A generation prompt; `messages` for chat models, `text` for plain-text models."""

    prompt_id: str
    source: str  # "config" | "heldout"
    user: str  # what a person reads as the prompt
    messages: list[dict] | None = None
    text: str | None = None
    article_id: str | None = None
    title: str | None = None
    heading: str | None = None
    reference: str | None = None  # the held-out chunk the prompt asks for


@dataclass
class Answer:
    text: str
    tokens: int  # generated tokens, not counting the stop token
    finish: str  # "stop" (stop/EOS token) | "length" (hit max_tokens)
    stop_token: str | None
    template_tokens: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def hit_limit(self) -> bool:
        return self.finish == "length"


@dataclass
class EvalSettings:
    mask_prompt: bool = False
    max_seq_length: int = MLX_LM_DEFAULT_MAX_SEQ_LENGTH
    batch_size: int = 4
    # False: blogtune.loss_window, the tokens training scores. True: mlx-lm's default_loss
    # window, which also scores the padding id 0 after each sample (for comparison with it).
    score_pad_target: bool = False
    train_sample_articles: int = 5
    heldout_prompts: int = 4
    prompts: list[str] = field(default_factory=list)
    max_tokens: int = 200
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


# --------------------------------------------------------------------------- helpers


def perplexity(loss: float | None) -> float | None:
    if loss is None:
        return None
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def relative_change(before: float | None, after: float | None) -> float | None:
    """(after - before) / before; negative means the fine-tuned model is better for losses."""
    if before is None or after is None or before == 0:
        return None
    return (after - before) / before


def read_training_settings(adapter_dir: str | Path) -> dict:
    """mask_prompt / max_seq_length as recorded in adapter_config.json (mlx-lm's defaults if absent)."""
    path = Path(adapter_dir) / "adapter_config.json"
    cfg = json.loads(path.read_text()) if path.is_file() else {}
    return {
        "mask_prompt": bool(cfg.get("mask_prompt", False)),
        "max_seq_length": int(cfg.get("max_seq_length") or MLX_LM_DEFAULT_MAX_SEQ_LENGTH),
    }


class Progress:
    """Logs `label: n/N samples, rate, ETA` at most every `every_s` seconds (and at the end)."""

    def __init__(self, label: str, total: int, every_s: float = 5.0):
        self.label, self.total, self.every_s = label, total, every_s
        self.start = self.last = time.monotonic()

    def update(self, done: int) -> None:
        now = time.monotonic()
        if done < self.total and now - self.last < self.every_s:
            return
        self.last = now
        elapsed = now - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        log.info(
            "%s: %d/%d samples (%d%%), %.1f samples/s, ETA %s",
            self.label,
            done,
            self.total,
            100 * done // max(self.total, 1),
            rate,
            _fmt_seconds(eta),
        )


def _fmt_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


# --------------------------------------------------------------------------- losses


def encode_samples(samples: Sequence[dict], tokenizer, mask_prompt: bool) -> list[tuple[list[int], int]]:
    """(tokens, prompt offset) per sample, via the same mlx-lm dataset class training uses."""
    if not samples:
        return []
    from mlx_lm.tuner.datasets import create_dataset

    if mask_prompt and not any(k in samples[0] for k in ("messages", "prompt")):
        mask_prompt = False  # plain text: mlx-lm cannot mask it, so training scored every token too
    dataset = create_dataset(list(samples), tokenizer, types.SimpleNamespace(mask_prompt=mask_prompt))
    return [tuple(dataset.process(dataset[i])) for i in range(len(dataset))]


def pad_batch(encoded: Sequence[tuple[list[int], int]], max_seq_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Zero-padded token matrix and (offset, length) rows, as mlx-lm's iterate_batches builds them."""
    lengths = [len(tokens) for tokens, _ in encoded]
    width = 1 + PAD_TO * ((max(lengths) + PAD_TO - 1) // PAD_TO)
    width = min(width, max_seq_length)
    batch = np.zeros((len(encoded), width), np.int32)
    rows = np.zeros((len(encoded), 2), np.int32)
    for j, (tokens, offset) in enumerate(encoded):
        n = min(len(tokens), max_seq_length)
        batch[j, :n] = tokens[:n]
        rows[j] = (offset, n)
    return batch, rows


def batch_token_nll(model, batch: np.ndarray, rows: np.ndarray, score_pad_target: bool = False):
    """Per-sample (NLL sum, token count) over blogtune.loss_window's targets; logits in float32."""
    import mlx.core as mx
    import mlx.nn as nn

    from blogtune.loss_window import target_window

    tokens = mx.array(batch)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    logits = model(inputs).astype(mx.float32)
    steps = mx.arange(1, targets.shape[1] + 1)  # step s predicts token s
    window = np.array([target_window(int(n), int(offset)) for offset, n in rows], np.int32)
    if score_pad_target:  # mlx-lm's default_loss window: also the padding target after the sample
        window[:, 1] += 1
    window = mx.array(window)
    mask = mx.logical_and(steps >= window[:, 0:1], steps < window[:, 1:])
    ce = nn.losses.cross_entropy(logits, targets) * mask
    nll, count = ce.sum(axis=1), mask.sum(axis=1)
    mx.eval(nll, count)
    return np.array(nll, dtype=np.float64), np.array(count, dtype=np.int64)


def sample_losses(
    model,
    tokenizer,
    samples: Sequence[dict],
    split: str,
    settings: EvalSettings,
    label: str = "",
    indices: Sequence[int] | None = None,
) -> list[SampleLoss]:
    """Score every sample (longest first, so an out-of-memory shows up at once)."""
    encoded = encode_samples(samples, tokenizer, settings.mask_prompt)
    indices = list(indices) if indices is not None else list(range(len(samples)))
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]), reverse=True)
    results: dict[int, tuple[float, int]] = {}
    progress = Progress(f"{label or split}", len(order))
    model.eval()
    from blogtune.training import _on_cpu, patched_attention

    with patched_attention(model, _on_cpu()):  # training's CPU attention/swiglu kernels
        for start in range(0, len(order), settings.batch_size):
            chunk = order[start : start + settings.batch_size]
            batch, rows = pad_batch([encoded[i] for i in chunk], settings.max_seq_length)
            nll, count = batch_token_nll(model, batch, rows, settings.score_pad_target)
            for k, i in enumerate(chunk):
                results[i] = (float(nll[k]), int(count[k]))
            progress.update(len(results))
    out = []
    for i, sample in enumerate(samples):
        nll, count = results[i]
        seq = len(encoded[i][0])
        out.append(
            SampleLoss(
                split=split,
                index=indices[i],
                article_id=str(sample.get("article_id", "")),
                title=str(sample.get("title", "")),
                heading=str(sample.get("heading", "")),
                seq_tokens=seq,
                tokens=count,
                nll=nll,
                truncated=seq > settings.max_seq_length,
            )
        )
    return out


def summarize(losses: Iterable[SampleLoss]) -> LossSummary:
    """Token-weighted: the mean over all scored tokens, not a mean of per-sample means."""
    losses = list(losses)
    return LossSummary(len(losses), sum(x.tokens for x in losses), sum(x.nll for x in losses))


def per_article(losses: Iterable[SampleLoss]) -> dict[tuple[str, str], tuple[str, LossSummary]]:
    """(split, article_id) -> (title, summary)."""
    groups: dict[tuple[str, str], list[SampleLoss]] = {}
    for x in losses:
        groups.setdefault((x.split, x.article_id), []).append(x)
    return {key: (items[0].title, summarize(items)) for key, items in groups.items()}


def pick_train_articles(samples: Sequence[dict], n: int, seed: int) -> list[str]:
    """A seeded, order-independent sample of n training article ids."""
    ids = sorted({str(s.get("article_id", "")) for s in samples})
    return sorted(random.Random(seed).sample(ids, min(n, len(ids))))


def token_stats(samples: Sequence[dict], tokenizer, mask_prompt: bool, max_seq_length: int) -> dict:
    """Size of a split as training sees it: rendered tokens, and how many samples get truncated."""
    lengths = [len(tokens) for tokens, _ in encode_samples(samples, tokenizer, mask_prompt)]
    return {
        "samples": len(lengths),
        "tokens": int(sum(lengths)),
        "mean_tokens": float(np.mean(lengths)) if lengths else None,
        "max_tokens": int(max(lengths)) if lengths else None,
        "truncated": int(sum(n > max_seq_length for n in lengths)),
    }


# --------------------------------------------------------------------------- generation


def template_token_texts(tokenizer) -> dict[int, str]:
    """id -> text of every special token (added tokens flagged special, plus the named ones).

    Non-special added tokens are left out: some tokenizers add plain words or HTML tags that a
    blog answer may legitimately contain.
    """
    found: dict[int, str] = {}
    for token_id, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(added, "special", False) and added.content:
            found[int(token_id)] = added.content
    for text in getattr(tokenizer, "all_special_tokens", []) or []:
        token_id = tokenizer.convert_tokens_to_ids(text)
        if text and isinstance(token_id, int):
            found.setdefault(token_id, text)
    return found


def find_template_tokens(text: str, token_ids: Iterable[int], specials: dict[int, str]) -> list[str]:
    """Special-token texts that appear in an answer, as text or as generated ids."""
    hits = {specials[t] for t in token_ids if t in specials}
    hits |= {s for s in specials.values() if s in text}
    return sorted(hits)


def system_message(samples: Iterable[dict]) -> dict | None:
    """The system turn the formatted data uses, so config prompts see the training context."""
    for sample in samples:
        for message in sample.get("messages", [])[:1]:
            if message.get("role") == "system":
                return dict(message)
        if "messages" in sample:
            return None
    return None


def config_prompts(prompts: Sequence[str], system: dict | None, chat: bool) -> list[Prompt]:
    out = []
    for i, text in enumerate(prompts):
        if chat:
            messages = ([system] if system else []) + [{"role": "user", "content": text}]
            out.append(Prompt(f"config-{i + 1}", "config", text, messages=messages))
        else:
            out.append(Prompt(f"config-{i + 1}", "config", text, text=text))
    return out


def heldout_prompts(test_samples: Sequence[dict], n: int) -> list[Prompt]:
    """Up to n prompts from held-out samples: first parts of distinct articles first."""
    if n <= 0:
        return []
    ranked = sorted(
        range(len(test_samples)),
        key=lambda i: (int(test_samples[i].get("part", 1) or 1), i),
    )
    seen: set[str] = set()
    picked: list[int] = []
    for i in ranked:  # one per article first, then more parts if articles run out
        aid = str(test_samples[i].get("article_id", i))
        if aid not in seen:
            seen.add(aid)
            picked.append(i)
    picked += [i for i in ranked if i not in picked]
    out = []
    for i in picked[:n]:
        s = test_samples[i]
        meta = dict(article_id=str(s.get("article_id", "")), title=s.get("title"), heading=s.get("heading"))
        if "messages" in s:
            messages = [m for m in s["messages"] if m.get("role") != "assistant"]
            reference = next((m["content"] for m in s["messages"] if m.get("role") == "assistant"), None)
            user = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
            out.append(
                Prompt(
                    f"heldout-{len(out) + 1}", "heldout", user, messages=messages, reference=reference, **meta
                )
            )
        else:  # plain text ("# title\n\nbody"): continue from the title line
            first, _, rest = str(s.get("text", "")).partition("\n\n")
            out.append(
                Prompt(
                    f"heldout-{len(out) + 1}", "heldout", first, text=first + "\n\n", reference=rest, **meta
                )
            )
    return out


def prompt_tokens(tokenizer, prompt: Prompt) -> list[int]:
    if prompt.messages is not None:
        return list(
            tokenizer.apply_chat_template(prompt.messages, add_generation_prompt=True, return_dict=False)
        )
    return list(tokenizer.encode(prompt.text))


def generate_answer(
    model,
    tokenizer,
    tokens: Sequence[int],
    max_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    specials: dict[int, str] | None = None,
) -> Answer:
    """One seeded sampled answer; records whether it stopped on a stop token or hit the limit."""
    import mlx.core as mx
    from mlx_lm.generate import stream_generate
    from mlx_lm.sample_utils import make_sampler

    specials = template_token_texts(tokenizer) if specials is None else specials
    mx.random.seed(seed)  # same seed for base and fine-tuned: differences come from the weights
    sampler = make_sampler(temp=temperature, top_p=top_p if top_p < 1.0 else 0.0)
    start = time.perf_counter()
    text, generated, finish, stop = [], [], "length", None
    for r in stream_generate(
        model, tokenizer, mx.array(list(tokens)), max_tokens=max_tokens, sampler=sampler
    ):
        text.append(r.text)
        if r.finish_reason is None:
            generated.append(r.token)
            continue
        finish = r.finish_reason
        if finish == "stop":  # the stop token itself is not part of the answer
            stop = tokenizer.convert_ids_to_tokens(int(r.token))
        else:
            generated.append(r.token)
    answer = "".join(text)
    return Answer(
        text=answer,
        tokens=len(generated),
        finish=finish,
        stop_token=stop,
        template_tokens=find_template_tokens(answer, generated, specials),
        seconds=round(time.perf_counter() - start, 3),
    )


def generate_all(
    model, tokenizer, prompts: Sequence[Prompt], settings: EvalSettings, label: str
) -> list[Answer]:
    specials = template_token_texts(tokenizer)
    answers = []
    for i, prompt in enumerate(prompts):
        answer = generate_answer(
            model,
            tokenizer,
            prompt_tokens(tokenizer, prompt),
            settings.max_tokens,
            settings.temperature,
            settings.top_p,
            settings.seed + i,
            specials,
        )
        log.info(
            "%s generation %d/%d (%s): %d tokens, %s%s",
            label,
            i + 1,
            len(prompts),
            prompt.prompt_id,
            answer.tokens,
            "hit the token limit" if answer.hit_limit else f"stopped on {answer.stop_token}",
            f", template tokens {answer.template_tokens}" if answer.template_tokens else "",
        )
        answers.append(answer)
    return answers


# --------------------------------------------------------------------------- whole run


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    per_article: list[dict]
    generations: list[dict]


def _load_split(path: str | Path | None) -> list[dict]:
    from blogtune.io_utils import read_jsonl

    if path is None or not Path(path).is_file():
        return []
    return list(read_jsonl(path))


def evaluate_model_pair(
    model_dir: str | Path,
    adapter_dir: str | Path,
    split_files: dict[str, str | Path],
    settings: EvalSettings,
) -> EvalResult:
    """Base pass, then the same adapters-applied model in place (one copy of the weights in memory)."""
    from mlx_lm import load
    from mlx_lm.tuner.utils import load_adapters

    from blogtune.training import rope_overrides

    started = time.time()
    data = {name: _load_split(split_files.get(name)) for name in ("train", "valid", "test")}
    chosen = set(pick_train_articles(data["train"], settings.train_sample_articles, settings.seed))
    train_idx = [i for i, s in enumerate(data["train"]) if str(s.get("article_id", "")) in chosen]
    eval_sets = {
        "test": (data["test"], list(range(len(data["test"])))),
        "valid": (data["valid"], list(range(len(data["valid"])))),
        "train_sample": ([data["train"][i] for i in train_idx], train_idx),
    }

    log.info("loading base model %s", model_dir)
    model, tokenizer = load(str(model_dir), model_config=rope_overrides(model_dir))
    chat = any("messages" in s for split in data.values() for s in split[:1])
    system = system_message(data["test"] or data["valid"] or data["train"])
    prompts = config_prompts(settings.prompts, system, chat) + heldout_prompts(
        data["test"], settings.heldout_prompts
    )
    data_stats = {
        name: token_stats(samples, tokenizer, settings.mask_prompt, settings.max_seq_length)
        for name, samples in data.items()
    }

    losses: dict[str, dict[str, list[SampleLoss]]] = {}
    answers: dict[str, list[Answer]] = {}
    for which in MODELS:
        if which == "finetuned":
            log.info("applying adapters %s", adapter_dir)
            load_adapters(model, str(adapter_dir))
            model.eval()  # LoRA dropout off
        losses[which] = {}
        for split, (samples, idx) in eval_sets.items():
            log.info("%s model, %s split: %d samples", which, split, len(samples))
            losses[which][split] = sample_losses(
                model, tokenizer, samples, split, settings, label=f"{which} · {split}", indices=idx
            )
        answers[which] = generate_all(model, tokenizer, prompts, settings, which)

    metrics = build_metrics(losses, answers, data_stats, settings, model_dir, adapter_dir, started)
    metrics["train_sample_articles"] = sorted(chosen)
    return EvalResult(metrics, per_article_rows(losses), generation_rows(prompts, answers))


def build_metrics(losses, answers, data_stats, settings, model_dir, adapter_dir, started) -> dict:
    splits = {}
    for split in SPLITS:
        base = summarize(losses["base"][split])
        tuned = summarize(losses["finetuned"][split])
        splits[split] = {
            "samples": base.samples,
            "articles": len({x.article_id for x in losses["base"][split]}),
            "tokens": base.tokens,
            "base": {"loss": base.loss, "perplexity": base.perplexity},
            "finetuned": {"loss": tuned.loss, "perplexity": tuned.perplexity},
            "loss_change": relative_change(base.loss, tuned.loss),
            "perplexity_change": relative_change(base.perplexity, tuned.perplexity),
        }
    gens = {
        which: {
            "answers": len(items),
            "stopped": sum(a.finish == "stop" for a in items),
            "hit_limit": sum(a.hit_limit for a in items),
            "with_template_tokens": sum(bool(a.template_tokens) for a in items),
            "mean_tokens": float(np.mean([a.tokens for a in items])) if items else None,
        }
        for which, items in answers.items()
    }
    return {
        "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.time() - started, 1),
        "model": str(model_dir),
        "adapters": str(adapter_dir),
        "settings": asdict(settings),
        "loss_window": (
            "mlx-lm default_loss: answer tokens plus the padding target after each sample"
            if settings.score_pad_target
            else "answer tokens only"
        ),
        "splits": splits,
        "data": data_stats,
        "generation": gens,
    }


def per_article_rows(losses: dict[str, dict[str, list[SampleLoss]]]) -> list[dict]:
    rows = []
    for split in SPLITS:
        base = per_article(losses["base"][split])
        tuned = per_article(losses["finetuned"][split])
        for key, (title, b) in base.items():
            t = tuned[key][1]
            rows.append(
                {
                    "split": split,
                    "article_id": key[1],
                    "title": title,
                    "samples": b.samples,
                    "tokens": b.tokens,
                    "base_loss": b.loss,
                    "finetuned_loss": t.loss,
                    "base_perplexity": b.perplexity,
                    "finetuned_perplexity": t.perplexity,
                    "loss_change": relative_change(b.loss, t.loss),
                }
            )
    return rows


def generation_rows(prompts: Sequence[Prompt], answers: dict[str, list[Answer]]) -> list[dict]:
    rows = []
    for i, p in enumerate(prompts):
        row = {
            "prompt_id": p.prompt_id,
            "source": p.source,
            "prompt": p.user,
            "article_id": p.article_id,
            "title": p.title,
            "heading": p.heading,
            "reference": p.reference,
        }
        for which in MODELS:
            a = answers[which][i]
            row[which] = {**asdict(a), "hit_limit": a.hit_limit}
        rows.append(row)
    return rows
