"""Block structure of a markdown text from markdown-it-py (CommonMark plus GFM tables).

The one parser every data step asks where blocks, headings and fenced code are, by source line.
Only the block level is parsed (the inline rules are off): that is all the chunker and the
cleaning need, and it keeps parsing at ~0.4 ms for a typical post.

Lines are ``"\\n"``-terminated slices of the text (see :func:`split_lines`); a lone ``"\\r"``
does not end a line here, so it is hidden from the parser (which would treat it as one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from markdown_it import MarkdownIt

# Line kinds: prose, opening fence, code inside a fence, closing fence.
PROSE, OPEN, CODE, CLOSE = 0, 1, 2, 3

_MD = MarkdownIt("commonmark").enable("table").disable("inline")
_HEADING = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*\n?\Z", re.S)
_CLOSING_HASHES = re.compile(r"(?:^|[ \t]+)#+\Z")


def split_lines(text: str) -> list[str]:
    """Lines with their "\\n" kept; "".join(result) == text. Only "\\n" ends a line."""
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


@dataclass(frozen=True)
class Fence:
    """A fenced code block: lines [start, end), the closing fence included when `closed`."""

    start: int
    end: int
    closed: bool
    info: str
    reopen: str  # a line that opens an equivalent fence at the start of a piece
    close: str  # a line that closes it at the end of a piece


@dataclass(frozen=True)
class Block:
    start: int  # first source line
    end: int  # line after its last one
    depth: int  # 0: top level; list items, quoted blocks are deeper
    kind: str  # token type without "_open": paragraph, fence, heading, bullet_list, ...


@dataclass
class Blocks:
    lines: list[str]
    kinds: list[int]  # PROSE/OPEN/CODE/CLOSE per line
    blocks: list[Block]
    fences: list[Fence]
    headings: dict[int, tuple[int, str]] = field(default_factory=dict)  # top-level: line -> (level, text)
    heading_lines: set[int] = field(default_factory=set)  # every line of a top-level heading
    indented_code: set[int] = field(default_factory=set)  # lines of indented code blocks


def _fence_of(tok, lines: list[str]) -> Fence:
    start, end = tok.map
    opening = lines[start]
    at = opening.find(tok.markup)
    # What stands before the marker: keep blockquote ">" and indentation (the code lines carry
    # them too), blank out list markers ("- ```"). A piece then parses as the source did.
    prefix = re.sub(r"[^>\s]", " ", opening[:at])
    last = lines[end - 1] if end - start >= 2 else ""
    body = last.lstrip(" \t>").rstrip()
    closed = len(body) >= len(tok.markup) and set(body) == {tok.markup[0]}
    reopen = prefix + opening[at:]
    return Fence(
        start=start,
        end=end,
        closed=closed,
        info=tok.info.strip(),
        reopen=reopen if reopen.endswith("\n") else reopen + "\n",
        close=prefix + tok.markup + "\n",
    )


@lru_cache(maxsize=256)
def parse_blocks(text: str) -> Blocks:
    """Blocks of `text` (cached: cleaning and chunking ask about the same text several times).
    The result is shared: do not modify it."""
    lines = split_lines(text)
    tokens = _MD.parse(text.replace("\r", " "))
    kinds = [PROSE] * len(lines)
    out = Blocks(lines=lines, kinds=kinds, blocks=[], fences=[])
    for i, tok in enumerate(tokens):
        if tok.map is None or tok.nesting < 0 or tok.type == "inline":
            continue
        kind = tok.type.removesuffix("_open")
        start, end = tok.map
        out.blocks.append(Block(start, end, tok.level, kind))
        if kind == "fence":
            fence = _fence_of(tok, lines)
            out.fences.append(fence)
            kinds[start] = OPEN
            for j in range(start + 1, end):
                kinds[j] = CODE
            if fence.closed:
                kinds[end - 1] = CLOSE
        elif kind == "code_block":
            out.indented_code.update(range(start, end))
        elif kind == "heading" and tok.level == 0:
            content = tokens[i + 1].content if i + 1 < len(tokens) else ""
            out.headings[start] = (int(tok.tag[1]), " ".join(content.split()))
            out.heading_lines.update(range(start, end))
    return out


def classify_lines(lines: list[str]) -> list[int]:
    """PROSE/OPEN/CODE/CLOSE for each line, as CommonMark sees the fences: indented ones in
    lists, inside blockquotes, an unclosed fence running to the end of its container."""
    text = "".join(lines)
    if "```" not in text and "~~~" not in text:
        return [PROSE] * len(lines)  # no fence can open: spare the parse (most calls in cleaning)
    return list(parse_blocks(text).kinds)


def heading_of(line: str) -> tuple[int, str]:
    """(level, text) of one ATX heading line taken alone, (0, "") otherwise."""
    if not line.lstrip(" ").startswith("#"):
        return 0, ""
    m = _HEADING.match(line)
    if not m:
        return 0, ""
    text = _CLOSING_HASHES.sub("", (m.group(2) or "").strip()).strip()
    return len(m.group(1)), text
