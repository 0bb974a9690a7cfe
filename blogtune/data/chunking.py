"""Clean one markdown post and cut it into chunks that follow its structure.

The invariant everything here keeps: ``"".join(c.text for c in chunks) == text``; nothing is
lost or duplicated, so a chunk's text is always a verbatim slice of the cleaned post.

Size rule (``max_chars``): every chunk is at most ``max_chars`` long, except
  1. a chunk whose only non-blank line is a line of a fenced code block (fence lines included)
     longer than ``max_chars``: code is cut between lines, never inside one;
  2. a chunk whose content (``text.strip()``) fits but whose surrounding whitespace does not,
     e.g. a code block of exactly ``max_chars`` plus the blank line after it: the whitespace
     stays attached rather than forming a whitespace-only chunk or cutting the block.
A fenced code block that fits in ``max_chars`` is never cut. One that does not is cut at line
starts; its pieces then do not carry balanced fences (adding fences would break the invariant).

Only ATX headings (``## Title``) count as headings; setext headings (underlined) are plain text.
"""

from __future__ import annotations

import logging
import math
import re
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import date, datetime

import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: TOML front matter is dropped unparsed
    tomllib = None

log = logging.getLogger(__name__)

# Line kinds: prose, opening fence, code inside a fence, closing fence.
PROSE, OPEN, CODE, CLOSE = 0, 1, 2, 3

_FENCE = re.compile(r"[ \t]*(`{3,}|~{3,})(.*)")
_HEADING = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*\n?\Z", re.S)
_CLOSING_HASHES = re.compile(r"(?:^|[ \t]+)#+\Z")
_HR = re.compile(r" {0,3}(?:(?:-[ \t]*){3,}|(?:\*[ \t]*){3,}|(?:_[ \t]*){3,})\Z")
_WORD = re.compile(r"\w")
_WHOLE_LINE_COMMENT = re.compile(r"^[ \t]*<!--(?:(?!-->).)*-->[ \t]*(?:\n|\Z)", re.M | re.S)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_YAML_FM = re.compile(r"\A---[ \t]*\n(.*?\n)?(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.S)
_TOML_FM = re.compile(r"\A\+\+\+[ \t]*\n(.*?\n)?\+\+\+[ \t]*(?:\n|\Z)", re.S)
_NONWS = re.compile(r"\S")
# Preferred places to cut an over-long prose line, best first (the cut goes after the match).
_LINE_CUTS = (
    re.compile(r"(?:[。！？；…]+|[.!?;][\"'”’)\]]*\s+)(?=\S)"),  # sentence end
    re.compile(r"(?:[，、：]|[,:]\s+)(?=\S)"),  # clause
    re.compile(r"\s+(?=\S)"),  # word
)


# ---------------------------------------------------------------------------- line helpers
def split_lines(text: str) -> list[str]:
    """Lines with their "\\n" kept; "".join(result) == text. Only "\\n" ends a line."""
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def classify_lines(lines: list[str]) -> list[int]:
    """PROSE/OPEN/CODE/CLOSE for each line. Fences may be indented (lists) and an unclosed
    fence runs to the end of the text, as in CommonMark."""
    kinds: list[int] = []
    fence_char = ""
    fence_len = 0
    for line in lines:
        if not fence_char:
            if line.lstrip(" \t")[:3] in ("```", "~~~"):
                marker, info = _FENCE.match(line).groups()
                if not (marker[0] == "`" and "`" in info):  # ```x``` is inline code
                    fence_char, fence_len = marker[0], len(marker)
                    kinds.append(OPEN)
                    continue
            kinds.append(PROSE)
        else:
            s = line.strip()
            if len(s) >= fence_len and s == fence_char * len(s):
                kinds.append(CLOSE)
                fence_char = ""
            else:
                kinds.append(CODE)
    return kinds


def heading_of(line: str) -> tuple[int, str]:
    """(level, text) of an ATX heading line, (0, "") otherwise."""
    if not line.lstrip(" ").startswith("#"):
        return 0, ""
    m = _HEADING.match(line)
    if not m:
        return 0, ""
    text = _CLOSING_HASHES.sub("", (m.group(2) or "").strip()).strip()
    return len(m.group(1)), text


def _norm(line: str) -> str:
    return " ".join(line.split())


# ---------------------------------------------------------------------------- cleaning
@dataclass
class CleanPost:
    title: str
    text: str
    meta: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def split_front_matter(text: str) -> tuple[dict, str, list[str]]:
    """(metadata, body, notes). YAML between leading ``---`` lines or TOML between ``+++``.

    Front matter that does not parse is kept as body text and noted: losing a post over a
    typo in its header would be worse than training on the header.
    """
    for regex, kind in ((_YAML_FM, "YAML"), (_TOML_FM, "TOML")):
        m = regex.match(text)
        if not m:
            continue
        source = m.group(1) or ""
        if kind == "TOML" and tomllib is None:
            return {}, text[m.end() :], ["TOML front matter needs Python >= 3.11; dropped unparsed"]
        try:
            meta = yaml.safe_load(source) if kind == "YAML" else tomllib.loads(source)
        except (yaml.YAMLError, ValueError) as exc:  # TOMLDecodeError is a ValueError
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return {}, text, [f"front matter is not valid {kind} ({first}); kept as text"]
        if meta is None:
            meta = {}
        if not isinstance(meta, dict):  # e.g. "---\nWords\n---" is a rule and a heading
            return {}, text, []
        return meta, text[m.end() :], []
    return {}, text, []


def remove_html_comments(text: str) -> str:
    """Drop ``<!-- ... -->`` outside code blocks; a comment alone on its line takes the line."""
    if "<!--" not in text:
        return text
    lines = split_lines(text)
    out: list[str] = []
    prose: list[str] = []
    for line, kind in zip(lines, classify_lines(lines), strict=True):
        if kind == PROSE:
            prose.append(line)
            continue
        if prose:
            out.append(_strip_comments("".join(prose)))
            prose = []
        out.append(line)
    if prose:
        out.append(_strip_comments("".join(prose)))
    return "".join(out)


def _strip_comments(text: str) -> str:
    return _COMMENT.sub("", _WHOLE_LINE_COMMENT.sub("", text))


def normalize_blank_lines(text: str) -> str:
    """Collapse runs of blank lines outside code to one, trim the ends, end with one "\\n"."""
    lines = split_lines(text)
    out: list[str] = []
    prev_blank = True  # drops leading blank lines
    for line, kind in zip(lines, classify_lines(lines), strict=True):
        if kind == PROSE and not line.strip():
            if not prev_blank:
                out.append("\n")
            prev_blank = True
        else:
            out.append(line)
            prev_blank = False
    body = "".join(out).rstrip()
    return body + "\n" if body else ""


def _take_title(meta: dict, body: str, fallback: str) -> tuple[str, str]:
    """Title from front matter, else the first ``# `` heading, else a heading of any level
    that opens the post (many blogs start with "## Title"), else `fallback`. That heading
    line is dropped from the body when it repeats the title (the title lives in metadata)."""
    title = _norm(str(meta.get("title") or ""))
    lines = split_lines(body)
    kinds = classify_lines(lines)
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    h1 = next((i for i, k in enumerate(kinds) if k == PROSE and heading_of(lines[i])[0] == 1), None)
    pick = h1
    if (
        pick is None
        and not title
        and first is not None
        and kinds[first] == PROSE
        and heading_of(lines[first])[0]
    ):
        pick = first
    if pick is not None:
        text = _norm(heading_of(lines[pick])[1])
        title = title or text
        if text and text == title:
            body = "".join(lines[:pick] + lines[pick + 1 :])
    return title or fallback, body


def clean_markdown(text: str, fallback_title: str) -> CleanPost:
    """Front matter, title, HTML comments and blank lines; the text is otherwise kept as is
    (inline HTML is content). `text` must already have "\\n" line ends."""
    meta, body, notes = split_front_matter(text)
    body = remove_html_comments(body)
    title, body = _take_title(meta, body, fallback_title)
    return CleanPost(title=title, text=normalize_blank_lines(body), meta=meta, notes=notes)


def meta_date(meta: dict) -> str | None:
    value = meta.get("date")
    if isinstance(value, datetime | date):
        return value.isoformat()
    if value is None:
        return None
    return _norm(str(value)) or None


def meta_tags(meta: dict) -> list[str]:
    value = meta.get("tags")
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list | tuple):
        return []
    return [t for t in (_norm(str(v)) for v in value if v is not None) if t]


# ---------------------------------------------------------------------------- boilerplate
def _boilerplate_candidates(text: str) -> set[str]:
    """Normalized prose lines that could be boilerplate. Headings only count when they carry
    a link (footers like "#### [My other project](...)"); a heading like "## Background"
    shared by most posts is structure, not boilerplate."""
    out: set[str] = set()
    lines = split_lines(text)
    for line, kind in zip(lines, classify_lines(lines), strict=True):
        if kind != PROSE:
            continue
        norm = _norm(line)
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
    remove = [k == PROSE and _norm(line) in bp for line, k in zip(lines, kinds, strict=True)]
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


# ---------------------------------------------------------------------------- chunking
@dataclass
class Chunk:
    article_id: str
    title: str
    heading_path: list[str]
    part: int  # 1-based
    parts: int
    text: str

    def to_dict(self) -> dict:
        return asdict(self)


# Cut levels, strongest first: headings by level (H1..H6), paragraphs, lines.
_HEADING_LEVELS = 6
_PARA = _HEADING_LEVELS
_LINE = _HEADING_LEVELS + 1
_N_LEVELS = _HEADING_LEVELS + 2


@dataclass
class _Doc:
    text: str
    max_chars: int

    def __post_init__(self) -> None:
        self.lines = split_lines(self.text)
        self.kinds = classify_lines(self.lines)
        self.blank = [not line.strip() for line in self.lines]
        self.levels = [
            heading_of(line)[0] if k == PROSE else 0 for line, k in zip(self.lines, self.kinds, strict=True)
        ]
        self.off = [0]
        self.nonblank = [0]  # prefix count of non-blank lines
        for line, blank in zip(self.lines, self.blank, strict=True):
            self.off.append(self.off[-1] + len(line))
            self.nonblank.append(self.nonblank[-1] + (not blank))

    def can_cut(self, level: int, i: int) -> bool:
        """May a chunk start at line i when cutting at `level`? Never before a blank line, so
        no piece is whitespace-only; never inside code except at the line level."""
        if self.blank[i]:
            return False
        if level < _PARA:
            return 0 < self.levels[i] <= level + 1
        if level == _PARA:
            k, prev = self.kinds[i], self.kinds[i - 1]
            return k == OPEN or (k == PROSE and (self.blank[i - 1] or prev == CLOSE))
        return True

    def heading_only(self, s: int, e: int) -> bool:
        """Do the whole lines in [s, e) hold only headings and blank lines?"""
        i = bisect_right(self.off, s) - 1
        if self.off[i] != s:
            return False
        seen = False
        while i < len(self.lines) and self.off[i] < e:
            if not self.blank[i]:
                if not self.levels[i]:
                    return False
                seen = True
            i += 1
        return seen

    def atoms(self, lo: int, hi: int, level: int) -> list[tuple[int, int]]:
        """Char spans covering lines [lo, hi): whole if they fit, else cut at the strongest
        level that offers a cut, recursively."""
        s, e = self.off[lo], self.off[hi]
        if e - s <= self.max_chars or len(self.text[s:e].strip()) <= self.max_chars:
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
        # One non-blank line left. Code is never cut inside a line; prose is.
        line = next(i for i in range(lo, hi) if not self.blank[i])
        if self.kinds[line] != PROSE:
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
        if out and doc.heading_only(s, e) and out[-1][1] - s <= doc.max_chars:
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
        line = bisect_right(doc.off, s) - 1
        while line < n - 1 and doc.blank[line]:
            line += 1
        while i <= line:
            level = doc.levels[i]
            if level:
                while stack and stack[-1][0] >= level:
                    stack.pop()
                stack.append((level, heading_of(doc.lines[i])[1]))
            i += 1
        paths.append([t for _, t in stack])
    return paths


def chunk_article(article_id: str, title: str, text: str, max_chars: int) -> list[Chunk]:
    """Cut `text` into chunks of at most `max_chars` (see the module docstring for the two
    exceptions): at headings first, then paragraphs, then lines, then (prose only) within a
    line; consecutive pieces are packed greedily. Whitespace-only text gives no chunks."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    if not text.strip():
        return []
    doc = _Doc(text, max_chars)
    atoms = _glue_headings(doc, doc.atoms(0, len(doc.lines), 0))
    spans = []
    cs, ce = atoms[0]
    for s, e in atoms[1:]:
        if e - cs <= max_chars:
            ce = e
        else:
            spans.append((cs, ce))
            cs, ce = s, e
    spans.append((cs, ce))
    paths = _heading_paths(doc, [s for s, _ in spans])
    n = len(spans)
    return [
        Chunk(article_id, title, path, k, n, text[s:e])
        for k, ((s, e), path) in enumerate(zip(spans, paths, strict=True), start=1)
    ]
