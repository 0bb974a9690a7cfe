"""Text repeated across posts (footers of links, author headers) found and removed.

Two rules, because two kinds of repeats occur:
  * a block of several consecutive lines at the start or end of a post, verbatim in at least
    `min_posts` posts: a footer the blog started appending at some point sits in only part of
    its posts, so a share would miss it, while several identical lines at the same end of
    several posts are no coincidence;
  * a single line found in at least `min_fraction` of the posts (and `min_posts` of them):
    one short sentence ("Thanks for reading") can repeat by chance, so it needs a share.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from blogtune.data.cleaning import norm_line, normalize_blank_lines
from blogtune.data.mdblocks import PROSE, classify_lines, heading_of, split_lines

BLOCK_MIN_LINES = 3  # two lines may repeat by chance ("---" and a sign-off); three rarely
BLOCK_MAX_LINES = 40  # a footer longer than this is a post of its own
_WORD = re.compile(r"\w")
_HR = re.compile(r" {0,3}(?:(?:-[ \t]*){3,}|(?:\*[ \t]*){3,}|(?:_[ \t]*){3,})\Z")

Block = tuple[str, ...]  # normalized non-blank lines, in order


@dataclass(frozen=True)
class Removed:
    """One thing removed from a post, for the report: a shared line or a head/tail block."""

    kind: str  # "line", "head" or "tail"
    text: str  # the line, or the block's lines joined by "\n"

    @property
    def lines(self) -> int:
        return self.text.count("\n") + 1


def _boilerplate_candidates(text: str) -> set[str]:
    """Normalized prose lines that could be boilerplate. Headings only count when they carry
    a link (footers like "#### [My other project](...)"); a heading like "## Background"
    shared by most posts is structure, not boilerplate."""
    out: set[str] = set()
    lines = split_lines(text)
    for line, kind in zip(lines, classify_lines(lines), strict=True):
        if kind != PROSE:
            continue
        norm = norm_line(line)
        if not norm or not _WORD.search(norm):
            continue
        if heading_of(norm)[0] and "](" not in norm:
            continue
        out.add(norm)
    return out


def find_boilerplate(texts: list[str], min_fraction: float = 0.5, min_posts: int = 3) -> list[str]:
    """Normalized lines (outside code) found in at least `min_fraction` of the posts and in at
    least `min_posts` posts, e.g. a footer of links appended to every post. Sorted."""
    if not 0 < min_fraction:
        raise ValueError(f"boilerplate min_fraction must be > 0, got {min_fraction}")
    if len(texts) < max(min_posts, 1):
        return []
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(_boilerplate_candidates(text))
    need = max(min_posts, math.ceil(min_fraction * len(texts) - 1e-9))
    return sorted(line for line, n in counts.items() if n >= need)


def strip_boilerplate(text: str, boilerplate: Iterable[str]) -> str:
    """Remove boilerplate lines (outside code), then headings left without content by the
    removal and horizontal rules left dangling at either end."""
    bp = set(boilerplate)
    if not bp:
        return text
    lines = split_lines(text)
    kinds = classify_lines(lines)
    remove = [k == PROSE and norm_line(line) in bp for line, k in zip(lines, kinds, strict=True)]
    if not any(remove):
        return text
    levels = [heading_of(line)[0] if k == PROSE else 0 for line, k in zip(lines, kinds, strict=True)]
    # Backwards: a heading whose section lost lines and now holds nothing goes too.
    next_kept: int | None = None
    removed_since = False
    for i in range(len(lines) - 1, -1, -1):
        if remove[i]:
            removed_since = True
            continue
        if not lines[i].strip():
            continue
        nxt = levels[next_kept] if next_kept is not None else 0
        if levels[i] and removed_since and (next_kept is None or 0 < nxt <= levels[i]):
            remove[i] = True
            continue
        next_kept, removed_since = i, False
    kept = [(line, k) for line, k, r in zip(lines, kinds, remove, strict=True) if not r]

    def dangling(item: tuple[str, int]) -> bool:
        line, k = item
        return k == PROSE and (not line.strip() or bool(_HR.match(line.rstrip("\n"))))

    while kept and dangling(kept[-1]):
        kept.pop()
    start = 0
    while start < len(kept) and dangling(kept[start]):
        start += 1
    return normalize_blank_lines("".join(line for line, _ in kept[start:]))




# ---------------------------------------------------------------------------- head/tail blocks
def _edge(text: str, tail: bool) -> tuple[list[int], Block]:
    """Indices and normalized text of the non-blank prose lines at one end of `text`, up to
    BLOCK_MAX_LINES, stopping at code (a footer is not inside a code block)."""
    lines = split_lines(text)
    kinds = classify_lines(lines)
    order = range(len(lines) - 1, -1, -1) if tail else range(len(lines))
    idx: list[int] = []
    for i in order:
        if kinds[i] != PROSE:
            break
        if lines[i].strip():
            idx.append(i)
            if len(idx) == BLOCK_MAX_LINES:
                break
    if tail:
        idx.reverse()
    return idx, tuple(norm_line(lines[i]) for i in idx)


def _ends(edge: Block, tail: bool) -> Iterable[Block]:
    for k in range(BLOCK_MIN_LINES, len(edge) + 1):
        yield edge[-k:] if tail else edge[:k]


def find_repeated_blocks(texts: list[str], min_posts: int = 3) -> tuple[set[Block], set[Block]]:
    """(heads, tails): blocks of at least BLOCK_MIN_LINES non-blank lines found verbatim (up to
    whitespace) at the start, resp. end, of at least `min_posts` posts."""
    if min_posts < 2:
        raise ValueError(f"chunk.boilerplate_min_posts must be >= 2, got {min_posts}")
    heads: Counter[Block] = Counter()
    tails: Counter[Block] = Counter()
    for text in texts:
        heads.update(_ends(_edge(text, tail=False)[1], tail=False))
        tails.update(_ends(_edge(text, tail=True)[1], tail=True))
    return (
        {b for b, n in heads.items() if n >= min_posts and _WORD.search("".join(b))},
        {b for b, n in tails.items() if n >= min_posts and _WORD.search("".join(b))},
    )


def _is_structure(line: str) -> bool:
    return bool(heading_of(line)[0]) and "](" not in line


def strip_blocks(text: str, heads: set[Block], tails: set[Block]) -> tuple[str, list[Removed]]:
    """`text` without the longest repeated block at its start and at its end."""
    lines = split_lines(text)
    drop: set[int] = set()
    removed: list[Removed] = []
    for tail, known in ((False, heads), (True, tails)):
        if not known:
            continue
        idx, edge = _edge(text, tail)
        best = max((len(b) for b in _ends(edge, tail) if b in known), default=0)
        if not tail:
            # A heading that ends a shared header belongs to the post's own text after it.
            while best and _is_structure(edge[best - 1]):
                best -= 1
        if best < BLOCK_MIN_LINES:
            continue
        take = idx[-best:] if tail else idx[:best]
        span = range(take[0], take[-1] + 1)
        if drop.intersection(span):
            continue  # a short post that is all header and footer: keep what the head took
        drop.update(span)
        block = edge[-best:] if tail else edge[:best]
        removed.append(Removed("tail" if tail else "head", "\n".join(block)))
    if not drop:
        return text, []
    kept = [line for i, line in enumerate(lines) if i not in drop]
    return _trim_rules(kept), removed


def _trim_rules(lines: list[str]) -> str:
    """Join `lines`, without blank lines and horizontal rules left dangling at either end."""
    kinds = classify_lines(lines)

    def dangling(i: int) -> bool:
        return kinds[i] == PROSE and (not lines[i].strip() or bool(_HR.match(lines[i].rstrip("\n"))))

    hi = len(lines)
    while hi and dangling(hi - 1):
        hi -= 1
    lo = 0
    while lo < hi and dangling(lo):
        lo += 1
    return normalize_blank_lines("".join(lines[lo:hi]))


# ---------------------------------------------------------------------------- both rules
def remove_boilerplate(
    texts: list[str], min_fraction: float = 0.5, min_posts: int = 3
) -> tuple[list[str], list[list[Removed]]]:
    """Texts without repeated head/tail blocks, then without shared lines; and, per text, what
    was removed from it."""
    heads, tails = find_repeated_blocks(texts, min_posts)
    out: list[str] = []
    removed: list[list[Removed]] = []
    for text in texts:
        new, gone = strip_blocks(text, heads, tails)
        out.append(new)
        removed.append(gone)
    shared = find_boilerplate(out, min_fraction, min_posts)
    if shared:
        bp = set(shared)
        for k, text in enumerate(out):
            present = _boilerplate_candidates(text) & bp
            if present:
                out[k] = strip_boilerplate(text, bp)
                removed[k].extend(Removed("line", line) for line in sorted(present))
    return out, removed


def removal_table(removed: Iterable[Iterable[Removed]]) -> list[tuple[str, int, int, str]]:
    """(kind, posts, lines, text) rows, most frequent first: what the report shows."""
    counts = Counter(r for per_post in removed for r in set(per_post))
    return [
        (r.kind, n, r.lines, r.text)
        for r, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0].kind, kv[0].text))
    ]
