"""Before/after evaluation: base model vs base+adapters on held-out and training articles, in one load."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from blogtune.evaluate.base_cache import BaseCache, cache_key
from blogtune.evaluate.generation import (
    Answer,
    Prompt,
    config_prompts,
    generate_all,
    heldout_prompts,
    system_message,
)
from blogtune.evaluate.losses import (
    SampleLoss,
    per_article,
    pick_train_articles,
    relative_change,
    sample_losses,
    summarize,
    token_stats,
)
from blogtune.evaluate.settings import EvalSettings
from blogtune.io_utils import read_jsonl
from blogtune.model import rope_overrides

log = logging.getLogger(__name__)

SPLITS = ("test", "valid", "train_sample")
MODELS = ("base", "finetuned")


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    per_article: list[dict]
    generations: list[dict]


def _load_split(path: str | Path | None) -> list[dict]:
    if path is None or not Path(path).is_file():
        return []
    return list(read_jsonl(path))


def evaluate_model_pair(
    model_dir: str | Path,
    adapter_dir: str | Path,
    split_files: dict[str, str | Path],
    settings: EvalSettings,
    base_cache: BaseCache | None = None,
) -> EvalResult:
    """Base pass, then the same adapters-applied model in place (one copy of the weights in memory).
    base_cache: the base pass is taken from there when the base model, the data and the settings
    are unchanged (blogtune.evaluate.base_cache)."""
    from mlx_lm import load
    from mlx_lm.tuner.utils import load_adapters

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
    cache = base_cache or BaseCache(None)
    key = cache_key(model_dir, "evaluate", eval_sets, [asdict(p) for p in prompts], asdict(settings)) if base_cache else ""
    if (cached := cache.load(key)) is not None:
        losses["base"] = {split: [SampleLoss(**x) for x in rows] for split, rows in cached["losses"].items()}
        answers["base"] = [Answer(**a) for a in cached["answers"]]
    for which in MODELS:
        if which == "finetuned":
            log.info("applying adapters %s", adapter_dir)
            load_adapters(model, str(adapter_dir))
            model.eval()  # LoRA dropout off
        if which in losses:
            continue
        losses[which] = {}
        for split, (samples, idx) in eval_sets.items():
            log.info("%s model, %s split: %d samples", which, split, len(samples))
            losses[which][split] = sample_losses(
                model, tokenizer, samples, split, settings, label=f"{which} · {split}", indices=idx
            )
        answers[which] = generate_all(model, tokenizer, prompts, settings, which)
        if which == "base":
            half = {split: [asdict(x) for x in rows] for split, rows in losses[which].items()}
            cache.save(key, {"losses": half, "answers": [asdict(a) for a in answers[which]]})

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
