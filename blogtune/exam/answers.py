"""Matching a generated answer against the reference: normalised exact match, token F1,
"I don't know" detection, and repeated n-gram loops."""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Sequence

_PUNCT = set(string.punctuation) | set("，。！？；：、“”‘’（）《》【】…—·「」")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_WORD = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\s\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
# Phrases that decline to answer (checked on the normalised answer).
_ABSTAIN = re.compile(
    r"\b(i (do not|don t|dont) know|i m not sure|i am not sure|not sure|no information|"
    r"(cannot|can t|unable to) (answer|find|say|determine|tell)|not mentioned|unknown)\b"
    r"|不知道|不清楚|无法回答|无法确定|没有提到|未提及|不确定"
)


def normalize(text: str) -> str:
    """SQuAD-style: NFKC, lower case, punctuation, English articles and extra spaces removed;
    backticks and surrounding quotes go with the punctuation."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if ch in _PUNCT else ch for ch in text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def answer_tokens(text: str) -> list[str]:
    """Words for F1: whitespace words, and one token per CJK character (Chinese has no spaces)."""
    return _WORD.findall(normalize(text))


def exact_match(prediction: str, reference: str) -> bool:
    return normalize(prediction) == normalize(reference)


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = answer_tokens(prediction), answer_tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def abstains(prediction: str) -> bool:
    """Does the answer say it does not know (instead of answering)?"""
    return bool(_ABSTAIN.search(normalize(prediction))) or not normalize(prediction)


def has_loop(tokens: Sequence[int], n: int = 4, repeats: int = 3) -> bool:
    """True when some n-gram of token ids occurs `repeats` times or more (a degenerate loop)."""
    counts: Counter = Counter()
    for i in range(len(tokens) - n + 1):
        gram = tuple(tokens[i : i + n])
        counts[gram] += 1
        if counts[gram] >= repeats:
            return True
    return False
