"""Train/valid/test split by article, stable as the blog grows.

Each article lands in a split by a hash of its id alone, so adding posts never moves an
existing one. The only exception is the minimal fill for tiny blogs: when a split that
should have articles (nonzero fraction) came out empty, one article is moved into it. That
can only happen while a blog has a handful of posts; once every split is populated by the
hash itself (a few dozen posts at the default fractions), assignments never shift again.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping

import pandas as pd

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


def check_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    """All three splits (missing ones count as 0), non-negative, train > 0, summing to 1."""
    unknown = set(fractions) - set(SPLITS)
    if unknown:
        raise ValueError(f"split.fractions: unknown split(s) {sorted(unknown)}; use {list(SPLITS)}")
    out = {s: float(fractions.get(s, 0.0)) for s in SPLITS}
    if any(v < 0 for v in out.values()):
        raise ValueError(f"split.fractions: must be >= 0, got {out}")
    if out["train"] <= 0:
        raise ValueError(f"split.fractions: train must be > 0, got {out}")
    total = sum(out.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"split.fractions: must add up to 1, they add up to {total:g} ({out})")
    return out


def hash_unit(article_id: str, salt: str = "") -> float:
    """sha256(salt + article_id) as a number in [0, 1)."""
    digest = hashlib.sha256((salt + article_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _ranges(fractions: Mapping[str, float]) -> dict[str, tuple[float, float]]:
    out = {}
    lo = 0.0
    for s in SPLITS:
        out[s] = (lo, lo + fractions[s])
        lo += fractions[s]
    return out


def _split_of_unit(u: float, fractions: Mapping[str, float]) -> str:
    for s, (lo, hi) in _ranges(fractions).items():
        if lo <= u < hi:
            return s
    return next(s for s in reversed(SPLITS) if fractions[s] > 0)  # float rounding at 1.0


def split_of(article_id: str, fractions: Mapping[str, float], salt: str = "") -> str:
    """The split an article falls in by hash, ranges taken in order train, valid, test."""
    return _split_of_unit(hash_unit(article_id, salt), check_fractions(fractions))


def assign_splits(
    article_ids: Iterable[str], fractions: Mapping[str, float], salt: str = "", source: str = "the input"
) -> dict[str, str]:
    """article_id -> split. Guarantees train is never empty; with >= 3 articles every split
    with a nonzero fraction has at least one; with exactly 2: one train and one in the first
    of valid/test with a nonzero fraction. `source` names the input in the error message."""
    fr = check_fractions(fractions)
    ids = sorted(set(article_ids))
    if len(ids) < 2:
        raise ValueError(
            f"need at least 2 articles to split into train and validation, found {len(ids)} in {source}"
        )
    unit = {a: hash_unit(a, salt) for a in ids}
    assigned = {a: _split_of_unit(unit[a], fr) for a in ids}
    ranges = _ranges(fr)
    required = ["train"] + [s for s in ("valid", "test") if fr[s] > 0]
    if len(ids) == 2:
        required = required[:2]
    for target in required:
        members = {s: [a for a in ids if assigned[a] == s] for s in SPLITS}
        if members[target]:
            continue

        def spare(s: str, members: dict = members) -> bool:
            return len(members[s]) > (1 if s in required else 0)

        # Donors: train when it can spare one (the usual case), else any split that can.
        if target != "train" and spare("train"):
            donors = members["train"]
        else:
            donors = [a for s in SPLITS if s != target and spare(s) for a in members[s]]
        lo, hi = ranges[target]
        pick = min(donors, key=lambda a: (max(lo - unit[a], unit[a] - hi, 0.0), a))
        log.info("split: %s was empty, moved %s into it (tiny blog)", target, pick)
        assigned[pick] = target
    return assigned


def _chars(chunks: list[Mapping]) -> int:
    return sum(len(c["text"]) for c in chunks)


def split_stats(chunks_by_split: Mapping[str, list[Mapping]]) -> pd.DataFrame:
    """Rows train, valid, test, total; columns articles, chunks, characters, mean_chunk_chars.
    Index named "split" (written as the first TSV column)."""
    rows = {}
    everything: list[Mapping] = []
    for s in SPLITS:
        chunks = list(chunks_by_split.get(s, []))
        everything.extend(chunks)
        rows[s] = chunks
    rows["total"] = everything
    table = pd.DataFrame(
        {
            "articles": [len({c["article_id"] for c in ch}) for ch in rows.values()],
            "chunks": [len(ch) for ch in rows.values()],
            "characters": [_chars(ch) for ch in rows.values()],
            "mean_chunk_chars": [round(_chars(ch) / len(ch), 1) if ch else 0.0 for ch in rows.values()],
        },
        index=pd.Index(list(rows), name="split"),
    )
    return table


DUPLICATE_COLUMNS = [
    "split",
    "article_id",
    "part",
    "kept_split",
    "kept_article_id",
    "kept_part",
    "chars",
    "preview",
]


def normalize_chunk_text(text: str) -> str:
    return " ".join(text.split())


def cross_split_duplicates(
    chunks_by_split: Mapping[str, list[Mapping]],
) -> tuple[dict[str, list[Mapping]], pd.DataFrame]:
    """Chunks whose normalized text also occurs in an earlier split (train < valid < test).

    Returns the splits with those chunks dropped (train is never touched, so evaluation does
    not score text the model trained on) and a table with one row per dropped chunk.
    """
    first_seen: dict[str, tuple[str, Mapping]] = {}
    kept: dict[str, list[Mapping]] = {}
    rows = []
    for s in SPLITS:
        kept[s] = []
        seen_here: dict[str, Mapping] = {}
        for c in chunks_by_split.get(s, []):
            key = normalize_chunk_text(c["text"])
            earlier = first_seen.get(key)
            if earlier is not None:
                ks, kc = earlier
                rows.append(
                    [
                        s,
                        c["article_id"],
                        c.get("part"),
                        ks,
                        kc["article_id"],
                        kc.get("part"),
                        len(c["text"]),
                        key[:80],
                    ]
                )
                continue
            seen_here.setdefault(key, c)
            kept[s].append(c)
        for key, c in seen_here.items():  # after the split: duplicates within one split stay
            first_seen[key] = (s, c)
    return kept, pd.DataFrame(rows, columns=DUPLICATE_COLUMNS)
