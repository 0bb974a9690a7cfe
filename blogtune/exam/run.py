"""The whole exam: the same items on the base model, then on base + adapters (one copy of the
weights in memory, like blogtune.evaluation), and the metrics comparing them."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from blogtune.evaluate.base_cache import BaseCache, cache_key
from blogtune.exam import scoring
from blogtune.exam.answers import abstains, exact_match, token_f1
from blogtune.exam.stats import by_lang, mean_ci, paired_lift, rate

log = logging.getLogger(__name__)
MODELS = ("base", "finetuned")


@dataclass
class ExamSettings:
    max_tokens: int = 48  # an answer's token budget: at least this ...
    answer_room: float = 1.5  # ... or this many times the reference answer's tokens, if more
    generate_items: int = 96  # short-answer items asked (teacher/view QA first, then cloze)
    heldout_items: int = 8  # of those, items about held-out posts (answers anyway vs "don't know")
    batch_size: int = 96
    seed: int = 0
    max_reference_tokens: int | None = 128  # longer references (a whole section) are not short answers


def pick_generation_items(items: Sequence[dict], n: int, heldout: int = 0) -> list[dict]:
    """Up to `heldout` items about held-out posts, then items about trained posts: QA first
    (they are the short-answer exam), then cloze; deterministic (items come in a seeded order)."""
    n = max(0, n)
    test = [it for it in items if it["split"] == "test"]
    trained = [it for it in items if it["split"] != "test"]
    trained.sort(key=lambda it: it["source"] == "cloze")  # stable: QA first, order kept
    held = test[: min(max(0, heldout), n)]
    return trained[: n - len(held)] + held


def reference_tokens(tokenizer, reference: str) -> int:
    return len(scoring._hf(tokenizer).encode(reference, add_special_tokens=False))


def answer_budget(tokenizer, reference: str, settings: ExamSettings) -> int:
    """Tokens an answer may take before it counts as not stopping. A fixed limit would fail a
    right answer that is longer than the limit (a code block, a section's lead), so the budget
    grows with the reference: max(max_tokens, ceil(answer_room x reference tokens))."""
    return max(settings.max_tokens, math.ceil(settings.answer_room * reference_tokens(tokenizer, reference)))


def short_answer_items(tokenizer, items: Sequence[dict], settings: ExamSettings) -> list[dict]:
    """The items asked for a short answer: those whose reference fits max_reference_tokens.
    A "what does this section say" item (the whole section as reference: up to ~350 tokens on
    the sample blog) has no exact match to hit, and one such answer sets the length of the
    whole batched decode (528 steps instead of 191: base answers 139 -> 101 s here)."""
    cap = settings.max_reference_tokens
    fits = [it for it in items if not cap or reference_tokens(tokenizer, it["answer"]) <= cap]
    if len(fits) < len(items):
        log.info("short answers: %d of %d items have references over %d tokens, not asked", len(items) - len(fits), len(items), cap)
    return pick_generation_items(fits, settings.generate_items, settings.heldout_items)


def run_exam(
    model_dir: str | Path, adapter_dir: str | Path, items: Sequence[dict], settings: ExamSettings, base_cache: BaseCache | None = None
) -> tuple[dict, list[dict]]:
    """(metrics, per-item rows with both models' results). base_cache: the base half is taken
    from there when the base model and the questions are unchanged (blogtune.evaluate.base_cache)."""
    from mlx_lm import load
    from mlx_lm.tuner.utils import load_adapters

    from blogtune.model.convert import rope_overrides

    started = time.time()
    mc_items = [it for it in items if it.get("options")]
    model, tokenizer = load(str(model_dir), model_config=rope_overrides(Path(model_dir)))
    sa_items = short_answer_items(tokenizer, items, settings)
    prompts = [scoring.prompt_tokens(tokenizer, it["question"]) for it in sa_items]
    budgets = [answer_budget(tokenizer, it["answer"], settings) for it in sa_items]
    cache = base_cache or BaseCache(None)
    key = cache_key(model_dir, "exam", mc_items, prompts, budgets, settings.batch_size) if base_cache else ""
    results: dict[str, dict[str, Any]] = {}
    if (cached := cache.load(key)) is not None:
        results["base"] = _half_from_json(cached)
    for which in MODELS:
        if which == "finetuned":
            load_adapters(model, str(adapter_dir))
        if which in results:
            continue
        model.eval()
        results[which] = _answer_half(model, tokenizer, which, mc_items, prompts, budgets, settings)
        if which == "base":
            cache.save(key, _half_to_json(results[which]))

    rows = item_rows(items, mc_items, sa_items, results, budgets)
    metrics = exam_metrics(rows, settings)
    metrics["speed"] = {w: results[w]["speed"] for w in MODELS}
    metrics["seconds"] = round(time.time() - started, 1)
    metrics["settings"] = asdict(settings)
    return metrics, rows


def _answer_half(model, tokenizer, which, mc_items, prompts, budgets, settings: ExamSettings) -> dict[str, Any]:
    log.info("%s: %d multiple-choice items", which, len(mc_items))
    mc, mc_speed = scoring.multiple_choice(model, tokenizer, mc_items)
    log.info("%s: multiple choice %s; %d short answers", which, mc_speed, len(prompts))
    gens, gen_speed = scoring.greedy_answers(model, tokenizer, prompts, budgets, settings.batch_size)
    log.info("%s: generation %s", which, gen_speed)
    return {"mc": mc, "gen": gens, "speed": {"multiple_choice": mc_speed, "generation": gen_speed}}


def _half_to_json(half: dict[str, Any]) -> dict[str, Any]:
    return {"mc": [asdict(m) for m in half["mc"]], "gen": [asdict(g) for g in half["gen"]], "speed": half["speed"]}


def _half_from_json(value: dict[str, Any]) -> dict[str, Any]:
    speed = {k: {**v, "cached": True} for k, v in value["speed"].items()}
    return {"mc": [scoring.MCResult(**m) for m in value["mc"]], "gen": [scoring.Generation(**g) for g in value["gen"]], "speed": speed}


def item_rows(items, mc_items, sa_items, results, budgets=None) -> list[dict]:
    mc_at = {it["item_id"]: i for i, it in enumerate(mc_items)}
    sa_at = {it["item_id"]: i for i, it in enumerate(sa_items)}
    rows = []
    for it in items:
        row = {k: it.get(k) for k in ("item_id", "kind", "source", "split", "article_id", "title", "heading", "lang", "question", "answer", "options", "answer_index")}
        if budgets is not None and it["item_id"] in sa_at:
            row["budget"] = budgets[sa_at[it["item_id"]]]
        for which in MODELS:
            r: dict[str, Any] = {}
            if it["item_id"] in mc_at:
                m = results[which]["mc"][mc_at[it["item_id"]]]
                r.update(mc_chosen=m.chosen, mc_correct=m.correct, mc_scores=m.scores)
            if it["item_id"] in sa_at:
                g = results[which]["gen"][sa_at[it["item_id"]]]
                r.update(answer=g.text, tokens=len(g.tokens), finish=g.finish, loop=g.loop)
                r.update(exact=exact_match(g.text, it["answer"]), f1=round(token_f1(g.text, it["answer"]), 4), abstain=abstains(g.text))
            row[which] = r
        rows.append(row)
    return rows


def _kind_groups(rows: Sequence[dict], key: str) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if key in r["base"]:
            groups.setdefault(r["kind"].split(":")[0], []).append(r)
            groups.setdefault(r["kind"], []).append(r)
    return groups


def _mc_block(rows: Sequence[dict], seed: int) -> dict:
    b = [r["base"]["mc_correct"] for r in rows]
    f = [r["finetuned"]["mc_correct"] for r in rows]
    wrong = [i for i, x in enumerate(b) if not x]
    return {
        "items": len(rows),
        "chance": 1 / max(1, len(rows[0]["options"])) if rows else None,
        "base": rate(b),
        "finetuned": rate(f),
        "lift": paired_lift(b, f, seed),
        # Of the items the base got wrong, the share the fine-tuned model gets right.
        "lift_on_base_wrong": rate([f[i] for i in wrong]),
    }


def _sa_block(rows: Sequence[dict], seed: int) -> dict:
    out: dict[str, Any] = {"items": len(rows)}
    for which in MODELS:
        rs = [r[which] for r in rows]
        out[which] = {
            "exact_match": rate([x["exact"] for x in rs]),
            "token_f1": mean_ci([x["f1"] for x in rs], seed),
            "stop_rate": rate([x["finish"] == "stop" for x in rs]),
            "loop_rate": rate([x["loop"] for x in rs]),
            "abstain_rate": rate([x["abstain"] for x in rs]),
            "mean_tokens": (sum(x["tokens"] for x in rs) / len(rs)) if rs else None,
        }
    b = [r["base"]["exact"] for r in rows]
    out["exact_match_lift"] = paired_lift(b, [r["finetuned"]["exact"] for r in rows], seed)
    out["exact_match_on_base_wrong"] = rate([r["finetuned"]["exact"] for r in rows if not r["base"]["exact"]])
    return out


def exam_metrics(rows: Sequence[dict], settings: ExamSettings) -> dict:
    """Per split (train = posts trained on: the headline; test = held-out posts) and exam kind."""
    out: dict[str, Any] = {"items": len(rows), "splits": {}}
    for split in ("train", "test"):
        srows = [r for r in rows if r["split"] == split]
        mc = _kind_groups(srows, "mc_correct")
        sa = _kind_groups(srows, "finish")
        out["splits"][split] = {
            "multiple_choice": {k: _mc_block(v, settings.seed) for k, v in sorted(mc.items())},
            "short_answer": {k: _sa_block(v, settings.seed) for k, v in sorted(sa.items())},
        }
    sa_all = [r for r in rows if "finish" in r["base"]]
    out["stop_rate"] = {w: rate([r[w]["finish"] == "stop" for r in sa_all]) for w in MODELS}
    out["loop_rate"] = {w: rate([r[w]["loop"] for r in sa_all]) for w in MODELS}
    out["stop_rate_by_lang"] = by_lang(sa_all, lambda rs: {w: rate([r[w]["finish"] == "stop" for r in rs]) for w in MODELS})
    held = [r for r in sa_all if r["split"] == "test"]
    # Held-out posts: answering anyway vs saying "I don't know" (reported, not a target).
    out["heldout_answers_anyway"] = {w: rate([not r[w]["abstain"] for r in held]) for w in MODELS}
    return out
