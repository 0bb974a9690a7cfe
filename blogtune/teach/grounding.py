"""Keep only generated text the source section supports; every drop carries a reason.

A pair survives when every number and identifier of its answer appears in the section, and most
of its content words (English words; Chinese character bigrams) do too. Template tokens, wrong
language, empty or over-long answers and duplicates are dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from blogtune.teach.sections import lang_code

_TEMPLATE = re.compile(r"<\|[^|>]{1,40}\|>|\[/?INST\]|<s>|</s>|<think>|</think>|<start_of_turn>|<end_of_turn>")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
# identifiers: backticked spans, flags, snake_case / dotted / path-like words
_IDENT = re.compile(r"`([^`\n]+)`|(?<![\w-])(--?[A-Za-z][\w-]*|[A-Za-z]\w*(?:[_./][\w]+)+)")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]{2,}")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]+")
STOPWORDS = frozenset(
    "the and for are but not you all any can had her was one our out has have his how its may new now "
    "see two who did get let say she too use what when where which why with this that from they will "
    "would there their them then than been into more also only some such very your about after before "
    "could does each just like make most much over should these those through under used uses using "
    "while because being both between during other same here post section blog my i me it is of in to "
    "on by as at an or be if so do no up".split()
)


def normalize(text: str) -> str:
    return re.sub(r"[\s`*_]+", " ", text.lower()).strip(" ?？。.!！")


def content_units(text: str) -> list[str]:
    low = text.lower()
    units = [w for w in _WORD.findall(low) if w not in STOPWORDS]
    for run in _CJK.findall(low):
        units += [run[i : i + 2] for i in range(len(run) - 1)] or [run]
    return units


def template_token(text: str) -> str | None:
    m = _TEMPLATE.search(text)
    return m.group(0) if m else None


@dataclass(frozen=True)
class Limits:
    max_answer_chars: int = 600
    max_rewrite_chars: int = 2000
    min_overlap: float = 0.6


def check(question: str, answer: str, source: str, lang: str, kind: str, limits: Limits,
          check_language: bool = True) -> str | None:
    """None when the pair is kept, else the reason it is dropped. Views copy the post's own text
    (code included, which has no language), so only teacher output gets the language check."""
    if not question.strip() or not answer.strip():
        return "empty"
    limit = limits.max_rewrite_chars if kind == "rewrite" else limits.max_answer_chars
    if len(answer) > limit:
        return f"too_long:{len(answer)}>{limit}"
    if tok := template_token(question + "\n" + answer):
        return f"template_token:{tok}"
    if check_language and lang_code(answer) != lang:
        return f"wrong_language:{lang_code(answer)}"
    src = source.lower()
    for num in _NUMBER.findall(answer):
        if not re.search(rf"(?<![\d.,]){re.escape(num)}(?![\d])", src):
            return f"ungrounded_number:{num}"
    for m in _IDENT.finditer(answer):
        ident = (m.group(1) or m.group(2)).strip()
        if ident.lower() not in src:
            return f"ungrounded_identifier:{ident}"
    units = content_units(answer)
    if units:
        share = sum(u in src for u in units) / len(units)
        if share < limits.min_overlap:
            return f"low_overlap:{share:.2f}<{limits.min_overlap}"
    return None
