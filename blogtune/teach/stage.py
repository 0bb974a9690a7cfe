"""One shard of the teach stage: its posts -> views + teacher samples, filtered, with held-out
questions set aside for the exam. `merge` joins the shards."""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from blogtune.io_utils import atomic_open, atomic_write_json, atomic_write_jsonl, read_jsonl
from blogtune.teach.cache import PostCache, post_key
from blogtune.teach.grounding import Limits, check, normalize
from blogtune.teach.prompts import PROMPT_VERSION, REWRITE_QUESTION, parse_qa, qa_messages, rewrite_messages
from blogtune.teach.sections import Section, group_posts, post_text, split_sections
from blogtune.teach.teachers import Request
from blogtune.teach.views import post_views

log = logging.getLogger(__name__)

HELDOUT_FIELDS = ("article_id", "title", "heading", "question", "answer", "source", "kind", "lang")
DROP_COLUMNS = ["article_id", "heading", "kind", "source", "reason", "question", "answer"]
COUNT_COLUMNS = ["article_id", "title", "kind", "source", "made", "dropped", "heldout", "train"]
MIN_PROSE_CHARS = 40  # sections shorter than this are not worth a teacher request


@dataclass
class TeachSettings:
    questions_per_section: int = 3
    rewrites: tuple[str, ...] = ("paraphrase",)
    heldout_fraction: float = 0.2
    heldout_salt: str = ""
    max_section_chars: int = 3000
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_params(cls, p: dict) -> TeachSettings:
        f = p.get("filter", {})
        return cls(p.get("questions_per_section", 3), tuple(p.get("rewrites", ())),
                   p.get("heldout", {}).get("fraction", 0.2), p.get("heldout", {}).get("salt", ""),
                   p.get("max_section_chars", 3000),
                   Limits(f.get("max_answer_chars", 600), f.get("max_rewrite_chars", 2000), f.get("min_overlap", 0.6)))

    def prompt_identity(self) -> dict:
        return {"version": PROMPT_VERSION, "questions": self.questions_per_section, "rewrites": list(self.rewrites),
                "max_section_chars": self.max_section_chars}


def stable_unit(*parts: str) -> float:
    """A number in [0, 1) fixed by `parts`: same post, same question -> same decision, every run."""
    h = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
    return int(h[:12], 16) / 16**12


def shard_of(article_id: str, n_shards: int) -> int:
    return int(hashlib.sha256(article_id.encode()).hexdigest()[:8], 16) % max(1, n_shards)


def teacher_requests(post: str, sections: list[Section], s: TeachSettings) -> list[Request]:
    reqs = []
    for i, sec in enumerate(sections):
        if len(sec.prose) < MIN_PROSE_CHARS:
            continue
        text = sec.text[: s.max_section_chars]
        if s.questions_per_section:
            reqs.append(Request(post, f"qa:{i}", qa_messages(sec.title, sec.heading, text, sec.lang,
                                                             s.questions_per_section)))
        for style in s.rewrites:
            reqs.append(Request(post, f"rw:{style}:{i}", rewrite_messages(sec.title, sec.heading, text, sec.lang, style)))
    return reqs


def teacher_records(sections: list[Section], answers: dict[str, str], drops: list[dict]) -> list[dict]:
    rows = []
    for key, text in sorted(answers.items()):
        parts = key.split(":")
        sec = sections[int(parts[-1])]
        base = {"article_id": sec.article_id, "title": sec.title, "heading": sec.heading, "source": "teacher",
                "lang": sec.lang}
        if parts[0] == "qa":
            pairs = parse_qa(text)
            if not pairs:
                drops.append({**base, "kind": "qa", "reason": "unparsed", "question": "", "answer": text[:300]})
            for q, a in pairs:
                rows.append({**base, "kind": "qa", "group": f"teacher:qa:{sec.key}#{normalize(q)}",
                             "question": q, "answer": a})
        else:
            style = parts[1]
            q = REWRITE_QUESTION[style][sec.lang].format(title=sec.title, heading=sec.heading)
            rows.append({**base, "kind": "rewrite", "group": f"teacher:rewrite:{style}:{sec.key}",
                         "question": q, "answer": text.strip()})
    return rows


def filter_records(rows: Iterable[dict], sources: dict[str, str], limits: Limits, drops: list[dict]) -> list[dict]:
    kept, seen_q, seen_a = [], set(), set()
    for r in rows:
        reason = check(r["question"], r["answer"], sources[r["heading"]], r["lang"], r["kind"], limits,
                       check_language=r["source"] == "teacher")
        qn, an = normalize(r["question"]), (r["kind"], normalize(r["answer"]))
        if reason is None and (qn in seen_q or (r["source"] == "teacher" and an in seen_a)):
            reason = "duplicate"
        if reason:
            drops.append({**{k: r[k] for k in DROP_COLUMNS if k in r}, "reason": reason,
                          "answer": r["answer"][:300]})
            continue
        seen_q.add(qn)
        seen_a.add(an)
        kept.append(r)
    return kept


def hold_out(rows: list[dict], fraction: float, salt: str) -> set[str]:
    """Groups of one post held out of training: each with probability `fraction` by a stable hash,
    and at least one per post that has two or more question groups. Rewrites are not questions."""
    groups = sorted({r["group"] for r in rows if r["kind"] != "rewrite"})
    if len(groups) < 2 or fraction <= 0:
        return set()
    units = {g: stable_unit(salt, g) for g in groups}
    held = {g for g, u in units.items() if u < fraction}
    return held or {min(units, key=units.get)}


def teach_posts(chunks: Iterable[dict], settings: TeachSettings, teacher=None, cache: PostCache | None = None) -> dict:
    """Teach a set of posts. Returns {"samples", "heldout", "drops", "counts", "stats"}."""
    t0 = time.monotonic()
    posts = {}
    for aid, rows in sorted(group_posts(chunks).items()):
        _, title, text = post_text(rows)
        posts[aid] = (title, text, split_sections(aid, title, text))
    answers: dict[str, dict[str, str]] = {}
    asked, cached = [], 0
    if teacher is not None:
        jobs, keys = [], {}
        for aid, (title, text, sections) in posts.items():
            keys[aid] = post_key(aid, title, text, teacher.identity, settings.prompt_identity())
            hit = cache.load(keys[aid]) if cache else None
            if hit is not None:
                answers[aid], cached = hit, cached + 1
            else:
                jobs.append((aid, teacher_requests(aid, sections, settings)))
        for aid, got in teacher.run(jobs):
            if cache:
                cache.save(keys[aid], aid, got)  # now: a later failure must not lose this post
            answers[aid] = got
            asked.append(aid)
    samples, heldout, drops, counts = [], [], [], []
    for aid, (title, _text, sections) in posts.items():
        made = post_views(sections) + teacher_records(sections, answers.get(aid, {}), post_drops := [])
        sources = {"": _text, **{s.heading: s.text for s in sections}}  # "": post-level (outline)
        kept = filter_records(made, sources, settings.limits, post_drops)
        held = hold_out(kept, settings.heldout_fraction, settings.heldout_salt)
        # a group sharing a held-out answer (one sentence naming two `identifiers`) is held out too:
        # no held-out answer is ever trained on as an answer
        held_answers = {normalize(r["answer"]) for r in kept if r["group"] in held}
        held |= {r["group"] for r in kept if r["kind"] != "rewrite" and normalize(r["answer"]) in held_answers}
        first_of_group = set()
        n_made = Counter((r["kind"], r["source"]) for r in made)
        n_drop = Counter((d["kind"], d["source"]) for d in post_drops)
        n_held, n_train = Counter(), Counter()
        for r in kept:
            ks = (r["kind"], r["source"])
            if r["group"] in held:
                if r["group"] not in first_of_group:  # one exam row per group (its first phrasing)
                    first_of_group.add(r["group"])
                    heldout.append({k: r[k] for k in HELDOUT_FIELDS})
                    n_held[ks] += 1
            else:
                samples.append(r)
                n_train[ks] += 1
        for ks in sorted(set(n_made) | set(n_drop)):
            counts.append({"article_id": aid, "title": title, "kind": ks[0], "source": ks[1], "made": n_made[ks],
                           "dropped": n_drop[ks], "heldout": n_held[ks], "train": n_train[ks]})
        drops += post_drops
    stats = {"posts": len(posts), "posts_asked": len(asked), "posts_cached": cached,
             "requests": teacher.stats.requests if teacher else 0,
             "output_tokens": teacher.stats.output_tokens if teacher else 0,
             "teacher": teacher.identity if teacher else None, "prompt_version": PROMPT_VERSION,
             "seconds": round(time.monotonic() - t0, 2)}
    return {"samples": samples, "heldout": heldout, "drops": drops, "counts": counts, "stats": stats}


def write_outputs(result: dict, out: dict[str, str | Path]) -> None:
    atomic_write_jsonl(out["samples"], result["samples"])
    atomic_write_jsonl(out["heldout"], result["heldout"])
    for name, cols in (("drops", DROP_COLUMNS), ("counts", COUNT_COLUMNS)):
        with atomic_open(out[name]) as fh:
            pd.DataFrame(result[name], columns=cols).to_csv(fh, sep="\t", index=False)
    atomic_write_json(out["stats"], result["stats"])


def teach_shard(train_path: str | Path, shard: int, n_shards: int, settings: TeachSettings, teacher,
                cache: PostCache | None, out: dict[str, str | Path]) -> dict:
    chunks = (c for c in read_jsonl(train_path) if shard_of(c["article_id"], n_shards) == shard)
    result = teach_posts(chunks, settings, teacher, cache)
    result["stats"]["shard"] = shard
    write_outputs(result, out)
    s = result["stats"]
    log.info("shard %d/%d: %d posts (%d asked, %d from cache), %d requests, %d samples, %d held out, %d dropped",
             shard, n_shards, s["posts"], s["posts_asked"], s["posts_cached"], s["requests"],
             len(result["samples"]), len(result["heldout"]), len(result["drops"]))
    return result


def _tsv(path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", keep_default_na=False, dtype=str)


def merge(shards: list[dict[str, str | Path]], out: dict[str, str | Path]) -> dict:
    """Join shard outputs. A training question identical to a held-out one (the same question
    asked about two posts) is dropped, so no held-out question text is ever trained on."""
    heldout = [r for s in shards for r in read_jsonl(s["heldout"])]
    held_q = {normalize(r["question"]) for r in heldout}
    samples, drops = [], [_tsv(s["drops"]) for s in shards]
    extra = []
    for s in shards:
        for r in read_jsonl(s["samples"]):
            if normalize(r["question"]) in held_q:
                extra.append({**{k: r[k] for k in DROP_COLUMNS if k in r}, "reason": "same_as_heldout"})
            else:
                samples.append(r)
    counts = pd.concat([_tsv(s["counts"]) for s in shards], ignore_index=True)
    stats = [read_json(s["stats"]) for s in shards]
    total = {k: sum(st[k] for st in stats) for k in ("posts", "posts_asked", "posts_cached", "requests", "output_tokens")}
    total.update(teacher=stats[0]["teacher"] if stats else None, prompt_version=PROMPT_VERSION, shards=len(shards),
                 samples=len(samples), heldout=len(heldout), dropped=sum(len(d) for d in drops) + len(extra),
                 samples_by_kind=dict(Counter(r["kind"] for r in samples)),
                 heldout_by_kind=dict(Counter(r["kind"] for r in heldout)))
    result = {"samples": samples, "heldout": heldout, "counts": counts.to_dict("records"), "stats": total,
              "drops": pd.concat([*drops, pd.DataFrame(extra, columns=DROP_COLUMNS)], ignore_index=True)
              .to_dict("records")}
    write_outputs(result, out)
    return result


def read_json(path) -> dict:
    import json

    return json.loads(Path(path).read_text(encoding="utf-8"))
