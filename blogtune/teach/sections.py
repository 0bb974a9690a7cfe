"""A post's sections, recovered from its split chunks (chunks join back to the cleaned post)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from markdown_it import MarkdownIt

from blogtune.data.cleaning import article_language, text_language

# With GFM tables, so a table is rows of cells, not a paragraph of "| a | b |" (headings parse alike).
_MD = MarkdownIt("commonmark").enable("table")
# Sentence ends: after CJK full stops, or . ! ? followed by whitespace (not "1.4 TB"), or a line end.
_SENTENCE_END = re.compile(r"(?<=[。！？；])|(?<=[.!?])\s+|\n+")


@dataclass
class Section:
    article_id: str
    title: str
    heading: str  # "A > B" path inside the post; the title for the text before any heading
    text: str  # the section's markdown, heading line included
    lang: str  # "zh" | "en"
    code_blocks: list[tuple[str, str]] = field(default_factory=list)  # (info, code)
    inline_code: list[str] = field(default_factory=list)  # `spans`, first occurrence order
    prose: str = ""  # text without code blocks, tables and heading line
    table_rows: list[list[tuple[str, str]]] = field(default_factory=list)  # [(header, cell), ...] per body row
    intros: list[str] = field(default_factory=list)  # prose sentences that announce a code block or table

    @property
    def key(self) -> str:
        return f"{self.article_id}#{self.heading}"


def post_text(chunks: Iterable[dict]) -> tuple[str, str, str]:
    """(article_id, title, text) of one post from its chunks, joined in part order."""
    rows = sorted(chunks, key=lambda c: c["part"])
    # A chunk's source text leaves out the fence lines the chunker added where it cut a code block.
    text = "".join(c["text"][c.get("added_head", 0) : len(c["text"]) - c.get("added_tail", 0)] for c in rows)
    return rows[0]["article_id"], rows[0]["title"], text


def lang_code(text: str) -> str:
    return "zh" if text_language(text) == "zh" else "en"


def section_lang(title: str, body: str) -> str:
    """A section's language from the title and its prose: code says nothing about it (a Chinese
    summary naming `--only-indexes`, `--report json` and `--min-bloat 30` is still Chinese)."""
    return "zh" if article_language(title, body) == "zh" else "en"


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if len(s.strip()) > 1]


def ends_with_colon(sentence: str) -> bool:
    return sentence.rstrip().endswith((":", "："))


def split_sections(article_id: str, title: str, text: str) -> list[Section]:
    """Leaf sections: from one heading to the next heading of any level. A heading that only
    repeats the title (the post's `# Title`) is not a section of its own."""
    lines = text.split("\n")
    tokens = _MD.parse(text)
    heads: list[tuple[int, int, str]] = []  # (line, level, text)
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open" and tok.map:
            heads.append((tok.map[0], int(tok.tag[1:]), tokens[i + 1].content.strip()))
    bounds = [(0, 0, "")] + heads
    out: list[Section] = []
    path: list[tuple[int, str]] = []
    for k, (start, level, head) in enumerate(bounds):
        end = bounds[k + 1][0] if k + 1 < len(bounds) else len(lines)
        if level:
            path = [p for p in path if p[0] < level] + [(level, head)]
        names = [h for _, h in path if h != title]
        body = "\n".join(lines[start:end]).strip("\n")
        section = _section(article_id, title, " > ".join(names) or title, body)
        if section.prose.strip() or section.code_blocks or section.table_rows:
            out.append(section)
    return out


def _section(article_id: str, title: str, heading: str, body: str) -> Section:
    """One parse of the body: code blocks, `code spans` (tables' included), the prose outside
    tables (what a section view quotes) and the table rows with their headers (fact answers)."""
    codes: list[tuple[str, str]] = []
    inline: list[str] = []
    prose_parts: list[str] = []
    rows: list[list[tuple[str, str]]] = []
    header: list[str] = []
    cells: list[str] | None = None  # the cells of the table row being read; None: not in a table row
    intros: list[str] = []
    tokens = _MD.parse(body)
    for i, tok in enumerate(tokens):
        if tok.type in ("fence", "code_block", "table_open") and i >= 2 and tokens[i - 1].type == "paragraph_close":
            # "Run it like this:" right above the block: quoted without the block, it promises what never comes.
            last = (sentences(tokens[i - 2].content) or [""])[-1]
            if ends_with_colon(last):
                intros.append(last)
        if tok.type in ("fence", "code_block"):
            codes.append((tok.info.strip(), tok.content))
        elif tok.type == "tr_open":
            cells = []
        elif tok.type == "tr_close" and cells is not None:
            if not header:
                header = cells
            elif cells:
                rows.append(list(zip(header, cells, strict=False)))  # GFM rows have the header's width
            cells = None
        elif tok.type == "table_close":
            header = []
        elif tok.type == "inline":
            if cells is not None:
                cells.append(tok.content.strip())
            elif tok.map and tok.map[0] == 0 and body.lstrip().startswith("#"):
                continue  # the heading line itself
            else:
                prose_parts.append(tok.content)
            for child in tok.children or []:
                if child.type == "code_inline" and child.content not in inline:
                    inline.append(child.content)
    prose = "\n".join(prose_parts)
    return Section(article_id, title, heading, body, section_lang(title, body), codes, inline, prose, rows, intros)


def post_sections(chunks: Iterable[dict]) -> list[Section]:
    return split_sections(*post_text(chunks))


def group_posts(chunks: Iterable[dict]) -> dict[str, list[dict]]:
    posts: dict[str, list[dict]] = {}
    for c in chunks:
        posts.setdefault(c["article_id"], []).append(c)
    return posts
