"""Clean one markdown post: front matter, title, HTML comments, whitespace; and its language.

Reading a post needs only this module (and :mod:`blogtune.data.mdblocks`), not the chunker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime

import yaml

from blogtune.data.mdblocks import PROSE, classify_lines, heading_of, parse_blocks, split_lines

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: TOML front matter is dropped unparsed
    tomllib = None

_WHOLE_LINE_COMMENT = re.compile(r"^[ \t]*<!--(?:(?!-->).)*-->[ \t]*(?:\n|\Z)", re.M | re.S)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_YAML_FM = re.compile(r"\A---[ \t]*\n(.*?\n)?(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.S)
_TOML_FM = re.compile(r"\A\+\+\+[ \t]*\n(.*?\n)?\+\+\+[ \t]*(?:\n|\Z)", re.S)
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
# Not prose, for the language decision: inline code, link and image targets, bare URLs.
_NOT_PROSE = re.compile(r"(`+)[^`]*?\1|\]\([^)]*\)|https?://\S+")
LANGUAGE_SAMPLE_CHARS = 20_000  # enough prose to decide; a long post need not be read whole
ZH_MIN_SHARE = 0.3  # share of letters that are CJK above which a text is Chinese


def norm_line(line: str) -> str:
    """`line` with its whitespace runs collapsed and its ends trimmed."""
    return " ".join(line.split())


# ---------------------------------------------------------------------------- cleaning
@dataclass
class CleanPost:
    title: str
    text: str
    meta: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    whitespace_saved: int = 0  # chars of trailing whitespace and extra blank lines removed


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
    title = norm_line(str(meta.get("title") or ""))
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
        text = norm_line(heading_of(lines[pick])[1])
        title = title or text
        if text and text == title:
            body = "".join(lines[:pick] + lines[pick + 1 :])
    return title or fallback, body


def strip_trailing_whitespace(text: str) -> str:
    """Trailing spaces and tabs off every line outside code (fenced or indented): two-space
    hard breaks and padding cost tokens and teach nothing. Code lines are kept as they are."""
    blocks = parse_blocks(text)
    out = []
    for i, (line, kind) in enumerate(zip(blocks.lines, blocks.kinds, strict=True)):
        if kind == PROSE and i not in blocks.indented_code:
            end = "\n" if line.endswith("\n") else ""
            line = line.rstrip() + end
        out.append(line)
    return "".join(out)


def clean_markdown(text: str, fallback_title: str) -> CleanPost:
    """Front matter, title, HTML comments, trailing whitespace and blank lines; the text is
    otherwise kept as is (inline HTML is content). `text` must already have "\\n" line ends."""
    meta, body, notes = split_front_matter(text)
    body = remove_html_comments(body)
    title, body = _take_title(meta, body, fallback_title)
    clean = normalize_blank_lines(strip_trailing_whitespace(body))
    saved = len(body) - len(clean)  # only whitespace goes in these two steps
    return CleanPost(title=title, text=clean, meta=meta, notes=notes, whitespace_saved=max(saved, 0))


def meta_date(meta: dict) -> str | None:
    value = meta.get("date")
    if isinstance(value, datetime | date):
        return value.isoformat()
    if value is None:
        return None
    return norm_line(str(value)) or None


def meta_tags(meta: dict) -> list[str]:
    value = meta.get("tags")
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list | tuple):
        return []
    return [t for t in (norm_line(str(v)) for v in value if v is not None) if t]




# ---------------------------------------------------------------------------- language
def text_language(text: str) -> str:
    """'zh' when CJK characters make up a fair share of the letters, else 'default'."""
    sample = text[:LANGUAGE_SAMPLE_CHARS]
    letters = sum(ch.isalpha() for ch in sample) or 1
    return "zh" if len(_CJK.findall(sample)) / letters > ZH_MIN_SHARE else "default"


def prose_of(text: str) -> str:
    """The prose of a markdown text: without fenced or indented code, inline code and URLs."""
    blocks = parse_blocks(text)
    kept = [
        line
        for i, (line, kind) in enumerate(zip(blocks.lines, blocks.kinds, strict=True))
        if kind == PROSE and i not in blocks.indented_code
    ]
    return _NOT_PROSE.sub(" ", "".join(kept))


def article_language(title: str, text: str) -> str:
    """The prompt language of a whole article, from its title and prose (code says nothing
    about the language a post is written in: a Chinese post full of SQL is still Chinese)."""
    return text_language(title + "\n" + prose_of(text))
