"""Exam items built from the posts themselves: cloze items (no teacher) and held-out QA rows.

A cloze item blanks one distinctive span of a prose sentence (a flag, version, number,
identifier, inline-code command or name), gives the post title and section as context, and
offers 4 options: the span and 3 spans of the same kind from other posts. Everything is a pure
function of the chunks and the seed, so items do not depend on the model.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

BLANK = "____"
N_OPTIONS = 4
KINDS = ("flag", "version", "number", "identifier", "command", "name")

_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_SENTENCE_END = re.compile(r"(?<=[。！？；])|(?<=[.!?;])\s+(?=[A-Z`\"'(\[])")
_LIST_MARK = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
# Plain-text spans (outside inline code), most specific kind first.
_PATTERNS: tuple[tuple[str, re.Pattern], ...] = (
    ("flag", re.compile(r"(?<![\w-])--?[a-z][a-z0-9]*(?:-[a-z0-9]+)+(?![\w-])|(?<![\w-])--[a-z][a-z0-9]+(?![\w-])")),
    ("version", re.compile(r"(?<![\w.])v?\d+\.\d+(?:\.\d+)*(?![\w.]*\d)")),
    ("number", re.compile(r"(?<![\w.,\-])\d{1,3}(?:,\d{3})+(?![\w.,]*\d)|(?<![\w.,\-])\d+(?:\.\d+)?(?![\w.,]*\d)")),
    ("identifier", re.compile(r"(?<![\w.])[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)+(?![\w])")),
    # Names: CamelCase (PostgreSQL, PolarDB) or acronyms (GIN, NVMe); plain capitalised words
    # are mostly sentence starts and headings, not names.
    ("name", re.compile(r"(?<![\w.])(?:[A-Z][a-z]+[A-Z][A-Za-z0-9]*|[A-Z]{2,}[a-z]?[A-Z0-9]*)(?![\w])")),
)
_MIN_CONTEXT = 12  # characters of sentence left around the blank: less is a guess, not recall
_MAX_SENTENCE = 300
# SQL keywords and other shouting that is not a name of anything in the blog.
_NOT_NAMES = set(
    "AS AND BY CREATE DELETE FROM FULL GROUP IF IN INDEX INSERT INTO IS JOIN KEY LIKE LIMIT NOT NULL "
    "ON OR ORDER SELECT SET TABLE THE UPDATE WHERE WHEN WITH OK ID IDS".split()
)


@dataclass
class Span:
    kind: str
    text: str
    start: int  # character offsets in the sentence
    end: int


@dataclass
class Item:
    """One exam item. `question` is the text shown to the model; it must never be trained on."""

    item_id: str
    kind: str  # cloze:<span kind> | qa:<kind>
    source: str  # "cloze" | "teacher" | "view"
    split: str  # split of the post the item is about (train: recall; test: held-out post)
    article_id: str
    title: str
    heading: str
    lang: str
    question: str
    answer: str
    sentence: str | None = None  # cloze: the original sentence
    options: list[str] = field(default_factory=list)  # cloze: 4 options, seeded order
    answer_index: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def language_of(text: str) -> str:
    return "zh" if re.search(r"[\u3400-\u9fff]", text) else "en"


def prose_sentences(text: str, fallback_heading: str) -> Iterable[tuple[str, str]]:
    """(section, sentence) for the prose of a chunk: code blocks, tables and headings skipped."""
    heading, in_code = fallback_heading, False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_code = not in_code
            continue
        if in_code or not line.strip() or line.lstrip().startswith(("|", ">", "<", "!")):
            continue
        m = _HEADING.match(line)
        if m:
            heading = m.group(2)
            continue
        line = _LIST_MARK.sub("", line).strip()
        for sentence in _SENTENCE_END.split(line):
            sentence = sentence.strip()
            if 20 <= len(sentence) <= _MAX_SENTENCE:
                yield heading, sentence


def find_spans(sentence: str) -> list[Span]:
    """Distinctive spans of a sentence: inline code first (command/flag/identifier), then plain text."""
    spans: list[Span] = []
    taken = [False] * len(sentence)
    for m in _INLINE_CODE.finditer(sentence):
        code = m.group(1).strip()
        if not code:
            continue
        if _PATTERNS[0][1].fullmatch(code):
            kind = "flag"
        elif re.fullmatch(r"[A-Za-z_][\w.]*(?:\(\))?", code) and not code.isupper():
            kind = "identifier"
        else:
            kind = "command"
        spans.append(Span(kind, code, m.start(1), m.end(1)))
        taken[m.start() : m.end()] = [True] * (m.end() - m.start())
    for kind, pattern in _PATTERNS:
        for m in pattern.finditer(sentence):
            if any(taken[m.start() : m.end()]) or (kind == "name" and m.group().upper() in _NOT_NAMES):
                continue
            if kind == "name" and m.start() == 0:
                continue  # a capitalised first word is not a name
            spans.append(Span(kind, m.group(), m.start(), m.end()))
            taken[m.start() : m.end()] = [True] * (m.end() - m.start())
    return sorted(spans, key=lambda s: s.start)


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def _rng(seed: int, *key: str) -> random.Random:
    digest = hashlib.sha256("\x1f".join([str(seed), *key]).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def cloze_question(title: str, heading: str, blanked: str, lang: str) -> str:
    """The question shown for a cloze item; worded unlike any training prompt."""
    if lang == "zh":
        return f"在我的博客文章《{title}》的“{heading}”一节中，有这样一句话：\n{blanked}\n空白处（{BLANK}）应该填什么？只回答空白处的内容。"
    return (
        f'In my blog post "{title}", section "{heading}", there is this sentence:\n{blanked}\n'
        f"What goes in the blank ({BLANK})? Reply with the missing text only."
    )


@dataclass
class _Candidate:
    split: str
    article_id: str
    title: str
    heading: str
    sentence: str
    span: Span


def candidates(chunks_by_split: Mapping[str, Sequence[Mapping]]) -> list[_Candidate]:
    out = []
    for split, chunks in chunks_by_split.items():
        for chunk in chunks:
            fallback = " > ".join(chunk.get("heading_path") or []) or chunk["title"]
            for heading, sentence in prose_sentences(chunk["text"], fallback):
                for span in find_spans(sentence):
                    left, right = sentence[: span.start], sentence[span.end :]
                    if len(left.strip("` ")) + len(right.strip("` ")) < _MIN_CONTEXT:
                        continue
                    visible = _norm(sentence).count(_norm(span.text)) > 1 or _norm(span.text) in _norm(
                        chunk["title"] + " " + heading
                    )
                    if visible:
                        continue  # the answer would show in the question itself
                    out.append(_Candidate(split, chunk["article_id"], chunk["title"], heading, sentence, span))
    return out


def build_cloze_items(
    chunks_by_split: Mapping[str, Sequence[Mapping]],
    seed: int = 0,
    max_items: int = 200,
    max_per_article: int = 8,
    splits: Sequence[str] = ("train", "test"),
) -> list[Item]:
    """Cloze items: at most one per sentence and `max_per_article` per post, kinds interleaved,
    3 same-kind distractors from other posts (distinct, absent from the sentence)."""
    cands = candidates(chunks_by_split)
    pool: dict[str, list[str]] = {}  # kind -> distinct span texts, with their articles
    owners: dict[tuple[str, str], set[str]] = {}
    for c in cands:
        key = (c.span.kind, _norm(c.span.text))
        if key not in owners:
            owners[key] = set()
            pool.setdefault(c.span.kind, []).append(c.span.text)
        owners[key].add(c.article_id)

    by_article: dict[tuple[str, str], list[_Candidate]] = {}
    for c in cands:
        if c.split in splits:
            by_article.setdefault((c.split, c.article_id), []).append(c)
    picked: list[tuple[_Candidate, list[str]]] = []
    for (split, aid), group in sorted(by_article.items()):
        rng = _rng(seed, "article", split, aid)
        rng.shuffle(group)
        # Round-robin over kinds so numbers (the commonest span) do not crowd out the rest.
        by_kind: dict[str, list[_Candidate]] = {}
        for c in group:
            by_kind.setdefault(c.span.kind, []).append(c)
        order = []
        while any(by_kind.values()):
            for kind in KINDS:
                if by_kind.get(kind):
                    order.append(by_kind[kind].pop(0))
        used_sentences: set[str] = set()
        n = 0
        for c in order:
            if n >= max_per_article or c.sentence in used_sentences:
                continue
            distractors = _distractors(c, pool, owners, seed)
            if distractors is None:
                continue
            used_sentences.add(c.sentence)
            picked.append((c, distractors))
            n += 1
    # Cap the total deterministically, keeping each split's share.
    if len(picked) > max_items:
        rng = _rng(seed, "cap")
        picked = sorted(rng.sample(picked, max_items), key=lambda p: (p[0].split, p[0].article_id))
    return [_item(c, d, seed) for c, d in picked]


def _distractors(c: _Candidate, pool, owners, seed: int) -> list[str] | None:
    answer = _norm(c.span.text)
    sentence = _norm(c.sentence)
    options = [
        t
        for t in pool.get(c.span.kind, [])
        if _norm(t) != answer
        and _norm(t) not in sentence
        and c.article_id not in owners[(c.span.kind, _norm(t))]
    ]
    if len(options) < N_OPTIONS - 1:
        return None
    rng = _rng(seed, "distractors", c.article_id, c.sentence, c.span.text)
    return rng.sample(sorted(options), N_OPTIONS - 1)


def _item(c: _Candidate, distractors: list[str], seed: int) -> Item:
    s, sp = c.sentence, c.span
    blanked = s[: sp.start] + BLANK + s[sp.end :]
    lang = language_of(c.title + s)
    options = [sp.text, *distractors]
    _rng(seed, "options", c.article_id, s, sp.text).shuffle(options)
    item_id = "cloze-" + hashlib.sha256(f"{c.article_id}\x1f{s}\x1f{sp.start}".encode()).hexdigest()[:12]
    return Item(
        item_id=item_id,
        kind=f"cloze:{sp.kind}",
        source="cloze",
        split=c.split,
        article_id=c.article_id,
        title=c.title,
        heading=c.heading,
        lang=lang,
        question=cloze_question(c.title, c.heading, blanked, lang),
        answer=sp.text,
        sentence=s,
        options=options,
        answer_index=options.index(sp.text),
    )


def qa_items(rows: Iterable[Mapping], split_of: Mapping[str, str]) -> list[Item]:
    """Items from heldout.jsonl (teacher stage): short-answer questions held out of training."""
    out = []
    for n, row in enumerate(rows, 1):
        missing = [k for k in ("article_id", "question", "answer") if not row.get(k)]
        if missing:
            raise ValueError(f"heldout.jsonl line {n}: missing {', '.join(missing)}")
        aid = str(row["article_id"])
        key = f"{aid}\x1f{row['question']}"
        out.append(
            Item(
                item_id="qa-" + hashlib.sha256(key.encode()).hexdigest()[:12],
                kind=f"qa:{row.get('kind') or 'fact'}",
                source=str(row.get("source") or "teacher"),
                split=split_of.get(aid, "train"),
                article_id=aid,
                title=str(row.get("title") or ""),
                heading=str(row.get("heading") or ""),
                lang=str(row.get("lang") or language_of(str(row["question"]))),
                question=str(row["question"]),
                answer=str(row["answer"]),
            )
        )
    return out


def leaked_questions(items: Iterable[Item | Mapping], training_texts: Iterable[str]) -> list[str]:
    """item_ids whose question text appears verbatim (whitespace-normalised) in training text."""
    corpus = "\x00".join(_norm(t) for t in training_texts)
    out = []
    for it in items:
        d = it if isinstance(it, Mapping) else it.to_dict()
        if _norm(d["question"]) in corpus:
            out.append(d["item_id"])
    return out


def sample_texts(sample: Mapping) -> list[str]:
    """Every text of a training sample (chat messages or plain text)."""
    if "messages" in sample:
        return [str(m.get("content", "")) for m in sample["messages"]]
    return [str(sample.get(k, "")) for k in ("text", "prompt", "completion") if k in sample]
