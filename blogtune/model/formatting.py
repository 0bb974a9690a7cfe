"""Chunks → mlx-lm training samples, rendered with the base model's own chat template.

Every chat sample must end with the model's end-of-turn token: a model trained on text
without it never learns to stop (the most common complaint after import into Ollama).
We write the standard mlx-lm `{"messages": [...]}` format (usable by `mlx_lm.lora` as is)
and check here, with the tokenizer, that the rendered text really ends at end-of-turn.

Chunks are cut by characters (model-independent), but training truncates by tokens: a 1,024-char
Chinese chunk is ~1,200 SmolLM2 tokens, so at max_seq_length 512 its second half and its
end-of-turn token were never learned (a third of the sample blog's chunks). So a chunk whose
sample exceeds max_seq_length is cut again, with the same chunker, into pieces that fit, and the
article's parts are renumbered.
"""

from __future__ import annotations

import logging
import re
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from blogtune.data.chunking import chunk_article, join_chunks
from blogtune.data.cleaning import text_language
from blogtune.io_utils import atomic_write_jsonl, read_jsonl

log = logging.getLogger(__name__)

DEFAULT_PROMPTS = {
    "default": 'Write part {part} of {parts} of my blog post "{title}", the section "{heading}".',
    "zh": "请写出我的博客文章《{title}》第 {part}/{parts} 部分，章节“{heading}”。",
}
PROMPT_FIELDS = {"title", "heading", "part", "parts"}


class FormatError(ValueError):
    """Formatting cannot produce valid samples; the message names the config key."""


@dataclass
class FormatStats:
    samples: int = 0
    tokens: list[int] = field(default_factory=list)
    ending_at_eot: int = 0
    chunks_cut_to_fit: int = 0  # chunks cut again so that their samples fit max_seq_length
    knowledge: int = 0  # samples from the teach stage (blogtune.teach.mix)
    over_max_seq_length: int = 0  # samples still longer (a code line cannot be cut): truncated

    def as_dict(self) -> dict:
        toks = self.tokens or [0]
        return {
            "samples": self.samples,
            "tokens_total": sum(self.tokens),
            "tokens_mean": round(statistics.fmean(toks), 1),
            "tokens_max": max(toks),
            "ending_at_end_of_turn": self.ending_at_eot,
            "chunks_cut_to_fit": self.chunks_cut_to_fit,
            "over_max_seq_length": self.over_max_seq_length,
            "knowledge_samples": self.knowledge,
        }


def validate_prompts(prompts: dict[str, str]) -> dict[str, str]:
    """Only {title} {heading} {part} {parts} may appear; a typo must fail before any work."""
    if "default" not in prompts:
        raise FormatError("format.prompts needs a 'default' template")
    for lang, template in prompts.items():
        names = {m.group(1) for m in re.finditer(r"{(\w*)[^{}]*}", template)}
        unknown = names - PROMPT_FIELDS
        if unknown:
            raise FormatError(
                f"format.prompts.{lang}: unknown placeholder(s) {sorted(unknown)}; "
                f"allowed: {sorted(PROMPT_FIELDS)}"
            )
    return prompts


def language_of(text: str) -> str:
    """'zh' when CJK characters make up a fair share of the text, else 'default'."""
    return text_language(text)


def user_prompt(chunk: dict, prompts: dict[str, str]) -> str:
    heading = " > ".join(chunk.get("heading_path") or []) or chunk["title"]
    # The chunker decides once per article from its prose; guess only for chunk files without it.
    lang = chunk.get("lang") or language_of(chunk["title"] + chunk["text"])
    template = prompts.get(lang, prompts["default"])
    return template.format(title=chunk["title"], heading=heading, part=chunk["part"], parts=chunk["parts"])


def chat_sample(chunk: dict, prompts: dict[str, str], system_prompt: str | None) -> dict:
    messages = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": user_prompt(chunk, prompts)})
    messages.append({"role": "assistant", "content": chunk["text"]})
    return {"messages": messages, **_meta(chunk)}


def text_sample(chunk: dict) -> dict:
    # mlx-lm's TextDataset appends EOS to every text sample, so the model learns to stop.
    return {"text": f"# {chunk['title']}\n\n{chunk['text']}", **_meta(chunk)}


def _meta(chunk: dict) -> dict:
    return {
        "article_id": chunk["article_id"],
        "title": chunk["title"],
        "heading": " > ".join(chunk.get("heading_path") or []),
        "part": chunk["part"],
        "parts": chunk["parts"],
    }


def end_of_turn_text(tokenizer) -> str:
    """The chat family's end-of-turn token (Gemma `<end_of_turn>`, not its eos `<eos>`)."""
    from blogtune.model.special_tokens import SpecialTokenError, end_of_turn_token

    try:
        return end_of_turn_token(tokenizer)
    except SpecialTokenError as err:
        raise FormatError(str(err)) from None


def check_sample(sample: dict, tokenizer, style: str) -> tuple[int, bool]:
    """Token count of the rendered sample and whether it ends at end-of-turn/EOS."""
    if style == "chat":
        rendered = tokenizer.apply_chat_template(sample["messages"], tokenize=False)
        ids = tokenizer.apply_chat_template(sample["messages"], tokenize=True, return_dict=False)
        ends = rendered.rstrip().endswith(end_of_turn_text(tokenizer))
        return len(ids), ends
    ids = tokenizer.encode(sample["text"])
    return len(ids) + 1, True  # +1: the EOS mlx-lm appends


# Tokens left free when fitting: renumbering parts ("part 3 of 12") can lengthen the prompt a little.
FIT_MARGIN = 8


def merge_heading_paths(outer: list[str], inner: list[str]) -> list[str]:
    """The heading path of a piece cut from a chunk: the chunk's path, then the headings met
    inside the chunk, without repeating the chunk's own heading (its text starts with it)."""
    for k in range(min(len(outer), len(inner)), 0, -1):
        if outer[-k:] == inner[:k]:
            return outer + inner[k:]
    return outer + inner


def fit_chunk(chunk: dict, measure: Callable[[dict], int], budget: int) -> list[dict]:
    """`chunk` as few pieces as possible whose samples measure at most `budget` tokens.

    The chunker itself cuts the text into small pieces (headings, paragraphs, lines; a code block
    only between its lines, each piece closed and reopened with its fence), which are then packed
    greedily by measured tokens, so the pieces' sources joined give back the chunk's text. A piece that cannot be cut (one long code line) stays over
    budget.
    """
    n = measure(chunk)
    if n <= budget:
        return [chunk]
    text = chunk["text"]
    overhead = measure({**chunk, "text": ""})  # template + prompt tokens of every piece
    if budget - overhead < budget // 4:
        return [chunk]  # pieces would be mostly prompt: better truncated than shredded
    # Small pieces: about a quarter of what fits, by this chunk's chars/token ratio.
    fits_chars = len(text) * (budget - overhead) / max(1, n - overhead)
    small = chunk_article(chunk["article_id"], chunk["title"], text, max(32, int(fits_chars / 4)))
    if len(small) <= 1:
        return [chunk]
    outer = list(chunk.get("heading_path") or [])

    base = {k: v for k, v in chunk.items() if k not in ("added_head", "added_tail")}

    def piece(group: list) -> dict:  # fence lines added between pieces of a group cancel out
        return {**base, "heading_path": merge_heading_paths(outer, group[0].heading_path), "text": join_chunks(group)}

    out, group = [], [small[0]]
    for nxt in small[1:]:
        if measure(piece([*group, nxt])) <= budget:
            group.append(nxt)
        else:
            out.append(piece(group))
            group = [nxt]
    out.append(piece(group))
    return out


def fit_to_length(chunks: Iterable[dict], measure: Callable[[dict], int], max_tokens: int) -> tuple[list[dict], int]:
    """Chunks (grouped by article, in order) with over-long ones cut to fit and parts renumbered;
    also how many chunks were cut."""
    articles: dict[str, list[dict]] = {}
    for chunk in chunks:
        articles.setdefault(chunk["article_id"], []).append(chunk)
    out, n_cut = [], 0
    for parts in articles.values():
        pieces = []
        for chunk in sorted(parts, key=lambda c: c["part"]):
            fitted = fit_chunk(chunk, measure, max_tokens - FIT_MARGIN)
            n_cut += len(fitted) > 1
            pieces.extend(fitted)
        out.extend({**p, "part": k, "parts": len(pieces)} for k, p in enumerate(pieces, start=1))
    return out, n_cut


def format_split(
    chunks: Iterable[dict],
    out_path: Path,
    tokenizer,
    style: str = "chat",
    prompts: dict[str, str] | None = None,
    system_prompt: str | None = None,
    max_seq_length: int | None = None,
    extra: Iterable[dict] = (),
    chunk_weight: float = 1.0,
) -> FormatStats:
    """Write one split's samples; every sample is checked against the tokenizer. With
    `max_seq_length`, chunks whose samples are longer are first cut to fit (see the module doc).
    `extra`: ready samples (the teach stage's, via blogtune.teach.mix) checked and written too;
    `chunk_weight`: copies of each chunk sample (the training mix's `chunks` weight)."""
    prompts = validate_prompts(prompts or DEFAULT_PROMPTS)
    if style == "chat" and not getattr(tokenizer, "chat_template", None):
        raise FormatError(
            "format.style is 'chat' but the base model has no chat template; "
            "use format.style: text for base (non-instruct) models"
        )
    if style not in {"chat", "text"}:
        raise FormatError(f"format.style must be 'chat' or 'text', not {style!r}")

    def make(chunk: dict) -> dict:
        return chat_sample(chunk, prompts, system_prompt) if style == "chat" else text_sample(chunk)

    stats = FormatStats()
    if max_seq_length:
        chunks, stats.chunks_cut_to_fit = fit_to_length(
            chunks, lambda c: check_sample(make(c), tokenizer, style)[0], max_seq_length
        )
    rows = []
    if chunk_weight != 1.0:
        from blogtune.teach import weighted

        chunks = weighted(chunks, chunk_weight, lambda c: (c["article_id"], str(c["part"]), c["text"][:64]))
    extra = list(extra)
    stats.knowledge = len(extra)
    for sample in [make(c) for c in chunks] + extra:
        n_tokens, ends = check_sample(sample, tokenizer, style)
        stats.samples += 1
        stats.tokens.append(n_tokens)
        stats.ending_at_eot += ends
        stats.over_max_seq_length += bool(max_seq_length) and n_tokens > max_seq_length
        rows.append(sample)
    if stats.samples and stats.ending_at_eot != stats.samples:
        raise FormatError(
            f"{stats.samples - stats.ending_at_eot} of {stats.samples} rendered samples do not end "
            f"with the end-of-turn token {end_of_turn_text(tokenizer)!r}; the chat template and "
            "end-of-turn token of the base model disagree — set model.eos_token, or format.style: text"
        )
    atomic_write_jsonl(out_path, rows)
    return stats


def format_splits(
    split_files: dict[str, Path],
    out_files: dict[str, Path],
    tokenizer,
    style: str,
    prompts: dict[str, str] | None,
    system_prompt: str | None,
    max_seq_length: int | None = None,
    extra: dict[str, list[dict]] | None = None,
    chunk_weight: float = 1.0,
) -> dict[str, dict]:
    """`extra`/`chunk_weight`: the training mix, applied to the train split only."""
    stats = {}
    for split, src in split_files.items():
        s = format_split(read_jsonl(src), out_files[split], tokenizer, style, prompts, system_prompt, max_seq_length,
                         (extra or {}).get(split, ()), chunk_weight if split == "train" else 1.0)
        stats[split] = s.as_dict()
        log.info(
            "%s: %d samples, %d tokens (mean %.0f, max %d), all ending at %r; %d chunk(s) cut to fit %s tokens",
            split, s.samples, sum(s.tokens), stats[split]["tokens_mean"], stats[split]["tokens_max"],
            end_of_turn_text(tokenizer) if style == "chat" else "EOS", s.chunks_cut_to_fit, max_seq_length or "no limit",
        )
        if s.over_max_seq_length:
            log.warning(
                "%s: %d sample(s) still exceed train.max_seq_length=%s (a code line that cannot be cut); "
                "training truncates them", split, s.over_max_seq_length, max_seq_length,
            )
    return stats
