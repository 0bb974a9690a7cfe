"""The training mix: which knowledge samples `format` adds to the raw chunks, and how often.

weights: expected copies of each sample per mix key (chunks, qa, rewrite, views); the integer
  part is repeated, the fraction decided per sample by a stable hash (0.5: every other sample).
max_per_post: at most this many samples of a key per post (null: all), chosen by stable hash
  with one phrasing of many questions before a second phrasing of any.
Every knowledge sample is a chat turn (user question, assistant answer) that `format` renders
with the base model's template, so it ends with the end-of-turn token: short answers are what
teach the model to stop.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from blogtune.teach.stage import stable_unit

MIX_KEYS = ("chunks", "qa", "rewrite", "views")
DEFAULT_WEIGHTS = {"chunks": 1.0, "qa": 1.0, "rewrite": 1.0, "views": 1.0}


def mix_key(row: dict) -> str:
    return "views" if row.get("source") == "view" else row["kind"]


def copies(weight: float, *ident: str) -> int:
    whole = int(weight)
    return whole + (stable_unit("mix", *ident) < weight - whole)


def weighted(rows: Iterable[dict], weight: float, ident) -> list[dict]:
    """`rows` each repeated copies(weight) times (ident(row): its stable identity)."""
    out = []
    for r in rows:
        out += [r] * copies(weight, *ident(r))
    return out


def cap_per_post(rows: list[dict], max_per_post: dict[str, int | None]) -> list[dict]:
    buckets: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        buckets[(r["article_id"], mix_key(r))].append(r)
    out = []
    for (_, key), items in buckets.items():
        cap = max_per_post.get(key)
        if cap is None or len(items) <= cap:
            out += items
            continue
        rank: dict[str, int] = defaultdict(int)
        order = []
        for r in items:
            order.append((rank[r["group"]], stable_unit(r["group"], r["question"]), r))
            rank[r["group"]] += 1
        out += [r for *_, r in sorted(order, key=lambda t: t[:2])[:cap]]
    return out


def to_sample(row: dict, style: str, system_prompt: str | None) -> dict:
    meta = {k: row[k] for k in ("article_id", "title", "heading", "kind", "source")}
    if style == "text":
        return {"text": f"{row['question']}\n\n{row['answer']}", **meta}
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages += [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": row["answer"]}]
    return {"messages": messages, **meta}


def knowledge_samples(rows: Iterable[dict], weights: dict[str, float] | None = None,
                      max_per_post: dict[str, int | None] | None = None, style: str = "chat",
                      system_prompt: str | None = None) -> list[dict]:
    """Teach rows (results/data/teach/samples.jsonl) -> training samples, mixed by the settings."""
    weights = {**DEFAULT_WEIGHTS, **(weights or {})}
    picked = cap_per_post(list(rows), max_per_post or {})
    out = []
    for r in picked:
        out += [to_sample(r, style, system_prompt)] * copies(weights[mix_key(r)], r["group"], r["question"])
    return out
