"""Cut one cleaned markdown post into chunks that follow its block structure.

Blocks (headings, paragraphs, lists, tables, fenced and indented code, HTML) come from
markdown-it-py via :mod:`blogtune.data.mdblocks`, by source line. A chunk is cut, strongest first,
at headings (by level), between top-level blocks, between nested blocks (list items, quoted
paragraphs), between lines, and (prose only) inside a line; pieces are packed greedily.

The invariant: every chunk's ``source`` (its text without the fence lines added below) is a
verbatim slice of the post, and ``"".join(c.source for c in chunks) == text``: nothing lost or
duplicated. A block that fits in ``max_chars`` is never cut.

A fenced code block longer than ``max_chars`` is cut between its lines; each piece is then
closed with a fence line and the next reopened with the block's opening line (info string
included), so every chunk is balanced markdown. ``added_head``/``added_tail`` count those chars.
Other blocks too long for a chunk (a list, a table, an HTML block) are cut between their lines
as they are: a piece may then read differently on its own (a table piece without its header).

Size rule: every chunk (added fence lines included) is at most ``max_chars`` long, except
  1. a piece of fenced code holding a single code line (or a fence line alone) too long with
     its fence lines: code is cut between lines, never inside one;
  2. a chunk whose content (``text.strip()``) fits but whose surrounding whitespace does not,
     e.g. a code block of exactly ``max_chars`` plus the blank line after it: the whitespace
     stays attached rather than forming a whitespace-only chunk or cutting the block.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import asdict, dataclass

from blogtune.data.mdblocks import CLOSE, CODE, OPEN, PROSE, Fence, parse_blocks

_NONWS = re.compile(r"\S")
# Preferred places to cut an over-long prose line, best first (the cut goes after the match).
_LINE_CUTS = (
    re.compile(r"(?:[。！？；…]+|[.!?;][\"'”’)\]]*\s+)(?=\S)"),  # sentence end
    re.compile(r"(?:[，、：]|[,:]\s+)(?=\S)"),  # clause
    re.compile(r"\s+(?=\S)"),  # word
)


@dataclass
class Chunk:
    article_id: str
    title: str
    heading_path: list[str]
    part: int  # 1-based
    parts: int
    text: str
    lang: str = "default"  # prompt language, decided once for the whole article
    added_head: int = 0  # chars of a reopening fence line put before the source text
    added_tail: int = 0  # chars of a closing fence line put after it

    @property
    def source(self) -> str:
        """The verbatim slice of the post this chunk holds (without added fence lines)."""
        return self.text[self.added_head : len(self.text) - self.added_tail]

    def to_dict(self) -> dict:
        return asdict(self)


def join_chunks(pieces: list[Chunk]) -> str:
    """Consecutive chunks of one text as one balanced text: the fence lines added where they
    were cut apart cancel out; those at the outer ends stay."""
    if not pieces:
        return ""
    if len(pieces) == 1:
        return pieces[0].text
    first, last = pieces[0], pieces[-1]
    return (
        first.text[: len(first.text) - first.added_tail]
        + "".join(p.source for p in pieces[1:-1])
        + last.text[last.added_head :]
    )


# Cut levels, strongest first: headings by level (H1..H6), blocks by depth (top level first:
# a list is cut between its items only when it does not fit, an item between its paragraphs
# only when the item does not fit), lines.
_HEADING_LEVELS = 6
_BLOCK = _HEADING_LEVELS
_MAX_DEPTH = 20  # markdown-it's nesting limit
_LINE = _BLOCK + _MAX_DEPTH + 1
_N_LEVELS = _LINE + 1


@dataclass
class _Doc:
    text: str
    max_chars: int

    def __post_init__(self) -> None:
        blocks = parse_blocks(self.text)
        self.lines = blocks.lines
        self.kinds = blocks.kinds
        self.headings = blocks.headings
        self.heading_lines = blocks.heading_lines
        n = len(self.lines)
        self.blank = [not line.strip() for line in self.lines]
        self.start_depth = [_MAX_DEPTH + 1] * n  # shallowest block starting on each line
        for b in blocks.blocks:
            self.start_depth[b.start] = min(self.start_depth[b.start], b.depth)
        self.fence_at: list[Fence | None] = [None] * n
        for f in blocks.fences:
            for i in range(f.start, f.end):
                self.fence_at[i] = f
        self.off = [0]
        self.nonblank = [0]  # prefix count of non-blank lines
        for line, blank in zip(self.lines, self.blank, strict=True):
            self.off.append(self.off[-1] + len(line))
            self.nonblank.append(self.nonblank[-1] + (not blank))

    def line_of(self, pos: int) -> int:
        return bisect_right(self.off, pos) - 1

    def added(self, s: int, e: int) -> tuple[str, str]:
        """Fence lines a chunk [s, e) needs: a reopening one when it starts inside a fenced
        block, a closing one when the block goes on after it."""
        head = tail = ""
        first = self.line_of(s)
        if self.kinds[first] in (CODE, CLOSE) and self.off[first] == s:
            head = self.fence_at[first].reopen
        if e < len(self.text):
            last, nxt = self.line_of(e - 1), self.line_of(e)
            fence = self.fence_at[last]
            if fence is not None and self.kinds[last] in (OPEN, CODE) and self.fence_at[nxt] is fence:
                tail = fence.close
        return head, tail

    def cost(self, s: int, e: int) -> int:
        head, tail = self.added(s, e)
        return e - s + len(head) + len(tail)

    def fits(self, s: int, e: int) -> bool:
        head, tail = self.added(s, e)
        extra = len(head) + len(tail)
        return e - s + extra <= self.max_chars or len(self.text[s:e].strip()) + extra <= self.max_chars

    def can_cut(self, level: int, i: int) -> bool:
        """May a chunk start at line i when cutting at `level`? Never before a blank line, so
        no piece is whitespace-only; inside a fence only at the line level, and not right
        after its opening line (blank lines aside) or before its closing one (a piece would hold
        no code)."""
        if self.blank[i]:
            return False
        if self.kinds[i] in (CODE, CLOSE):
            fence = self.fence_at[i]
            code_before = self.nonblank[i] - self.nonblank[fence.start + 1]
            return level == _LINE and self.kinds[i] == CODE and code_before > 0
        if level < _BLOCK:
            return i in self.headings and self.headings[i][0] <= level + 1
        if level < _LINE:
            return self.start_depth[i] <= level - _BLOCK
        return True

    def heading_only(self, s: int, e: int) -> bool:
        """Do the whole lines in [s, e) hold only top-level headings and blank lines?"""
        i = self.line_of(s)
        if self.off[i] != s:
            return False
        seen = False
        while i < len(self.lines) and self.off[i] < e:
            if not self.blank[i]:
                if i not in self.heading_lines:
                    return False
                seen = True
            i += 1
        return seen

    def atoms(self, lo: int, hi: int, level: int) -> list[tuple[int, int]]:
        """Char spans covering lines [lo, hi): whole if they fit, else cut at the strongest
        level that offers a cut, recursively."""
        s, e = self.off[lo], self.off[hi]
        if self.fits(s, e):
            return [(s, e)]
        for lvl in range(level, _N_LEVELS):
            cuts = [i for i in range(lo + 1, hi) if self.can_cut(lvl, i)]
            if cuts and self.nonblank[cuts[0]] == self.nonblank[lo]:
                cuts.pop(0)  # leading blank lines join the first piece
            if cuts:
                bounds = [lo, *cuts, hi]
                out: list[tuple[int, int]] = []
                for a, b in zip(bounds, bounds[1:], strict=False):
                    out.extend(self.atoms(a, b, lvl + 1))
                return out
        # No cut left: one non-blank line, or one code line with its fence lines. Code is
        # never cut inside a line; prose is.
        nonblank = [i for i in range(lo, hi) if not self.blank[i]]
        if len(nonblank) != 1 or self.kinds[nonblank[0]] != PROSE:
            return [(s, e)]
        return _char_spans(self.text, s, e, self.max_chars)


def _char_spans(text: str, start: int, end: int, max_chars: int) -> list[tuple[int, int]]:
    """Cut one over-long prose line, preferring sentence, clause and word ends. Every piece
    starts with a non-space (the first contains one), so none is whitespace-only."""
    spans = []
    pos = start
    while end - pos > max_chars:
        cut = _best_cut(text, pos, end, max_chars)
        if cut is None:
            break
        spans.append((pos, cut))
        pos = cut
    spans.append((pos, end))
    return spans


def _best_cut(text: str, pos: int, end: int, max_chars: int) -> int | None:
    first = _NONWS.search(text, pos, end)
    if first is None:
        return None
    lo = first.start() + 1  # the piece must hold a non-space
    nxt = _NONWS.search(text, lo, end)
    if nxt is None:
        return None  # only whitespace follows: it stays with this piece
    limit = min(pos + max_chars, end - 1)
    if nxt.start() > limit:
        return nxt.start()  # a long run of spaces: over size by whitespace only
    floor = max(lo, pos + max_chars // 2)  # do not trade a good size for a nice cut
    for regex in _LINE_CUTS:
        best = None
        for m in regex.finditer(text, pos, limit + 1):
            if m.end() >= floor:
                best = m.end()
        if best is not None:
            return best
    p = limit
    while text[p].isspace():
        p -= 1
    return p


def _glue_headings(doc: _Doc, atoms: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Join a heading-only piece to the piece after it (when both fit), so packing never
    leaves a heading stranded at the end of a chunk, away from its text."""
    out: list[tuple[int, int]] = []
    for s, e in reversed(atoms):
        if out and doc.heading_only(s, e) and doc.cost(s, out[-1][1]) <= doc.max_chars:
            out[-1] = (s, out[-1][1])
        else:
            out.append((s, e))
    return out[::-1]


def _heading_paths(doc: _Doc, starts: list[int]) -> list[list[str]]:
    paths = []
    stack: list[tuple[int, str]] = []
    i = 0
    n = len(doc.lines)
    for s in starts:
        line = doc.line_of(s)
        while line < n - 1 and doc.blank[line]:
            line += 1
        while i <= line:
            if i in doc.headings:
                level, title = doc.headings[i]
                while stack and stack[-1][0] >= level:
                    stack.pop()
                stack.append((level, title))
            i += 1
        paths.append([t for _, t in stack])
    return paths


def chunk_article(article_id: str, title: str, text: str, max_chars: int, lang: str = "default") -> list[Chunk]:
    """Cut `text` into chunks of at most `max_chars` (see the module docstring for the two
    exceptions). Whitespace-only text gives no chunks."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    if not text.strip():
        return []
    doc = _Doc(text, max_chars)
    atoms = _glue_headings(doc, doc.atoms(0, len(doc.lines), 0))
    spans = []
    cs, ce = atoms[0]
    for s, e in atoms[1:]:
        if doc.cost(cs, e) <= max_chars:
            ce = e
        else:
            spans.append((cs, ce))
            cs, ce = s, e
    spans.append((cs, ce))
    paths = _heading_paths(doc, [s for s, _ in spans])
    n = len(spans)
    chunks = []
    for k, ((s, e), path) in enumerate(zip(spans, paths, strict=True), start=1):
        head, tail = doc.added(s, e)
        chunks.append(Chunk(article_id, title, path, k, n, head + text[s:e] + tail, lang, len(head), len(tail)))
    return chunks
