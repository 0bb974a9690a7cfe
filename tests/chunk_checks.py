"""What every chunking result must satisfy, shared by the chunking and real-data tests."""

from __future__ import annotations

from bisect import bisect_right

from blogtune.data.chunking import Chunk, join_chunks
from blogtune.data.mdblocks import CODE, OPEN, PROSE, parse_blocks, split_lines


def unclosed_fences(text: str) -> list:
    return [f for f in parse_blocks(text).fences if not f.closed]


def check_chunks(text: str, chunks: list[Chunk], max_chars: int) -> None:
    """Every promise chunk_article makes, checked on one result."""
    if not text.strip():
        assert chunks == []
        return
    # Nothing lost, nothing duplicated: on the sources, and on the texts joined back.
    assert "".join(c.source for c in chunks) == text
    assert join_chunks(chunks) == text
    assert [c.part for c in chunks] == list(range(1, len(chunks) + 1))
    assert all(c.parts == len(chunks) for c in chunks)
    src = parse_blocks(text)
    pos = 0
    bounds = set()
    for c in chunks:
        assert c.text.strip(), "whitespace-only chunk"
        assert c.text == c.text[: c.added_head] + c.source + c.text[len(c.text) - c.added_tail :]
        # Balanced: every fence in the chunk closes, unless it ends here unclosed in the post too.
        first = bisect_right_offsets(src, pos)
        last = bisect_right_offsets(src, pos + len(c.source) - 1)
        open_in_post = {f.start for f in unclosed_fences(text) if first <= f.end - 1 <= last}
        for f in unclosed_fences(c.text):
            line = first + f.start - (1 if c.added_head else 0)  # its line in the post
            if f.start == 0 and c.added_head:
                line = next(g.start for g in src.fences if g.start < first < g.end)
            # A post's fence must close in the chunk (unless it never closes in the post); a
            # "```" line that was no fence in the post (inside an HTML block cut apart) may not.
            assert src.kinds[line] != OPEN or line in open_in_post, c.text
        if c.added_head:  # reopened with the cut block's own opening line
            cut = next(f for f in src.fences if f.start < first < f.end)
            fences = parse_blocks(c.text).fences
            if cut.reopen[: len(cut.reopen) - len(cut.reopen.lstrip(" "))].count(" ") < 4:
                assert fences[0].start == 0 and fences[0].info == cut.info, c.text
            else:  # a fence indented 4+ (in a nested list) reads as indented code on its own
                assert not fences or fences[0].start > 0, c.text
        if len(c.text) > max_chars and len(c.text.strip()) > max_chars:
            # Only allowed for a piece of fenced code holding at most one code line.
            lines = split_lines(c.source)
            kinds = src.kinds[first : first + len(lines)]
            code = [line for line, kind in zip(lines, kinds, strict=True) if kind == CODE and line.strip()]
            other = [line for line, kind in zip(lines, kinds, strict=True) if kind == PROSE and line.strip()]
            assert len(code) <= 1 and not other, c.text  # one code line, or fence lines alone
        pos += len(c.source)
        bounds.add(pos)
    bounds.discard(len(text))
    offsets = line_offsets(text)
    for b in src.blocks:
        s, e = offsets[b.start], offsets[b.end]
        if len(text[s:e].rstrip()) <= max_chars:
            assert not any(s < x < e for x in bounds), f"a {b.kind} block that fits was cut"


def line_offsets(text: str) -> list[int]:
    out = [0]
    for line in split_lines(text):
        out.append(out[-1] + len(line))
    return out


def bisect_right_offsets(blocks, pos: int) -> int:
    """Index of the line holding char `pos` of the parsed text."""
    return bisect_right(line_offsets("".join(blocks.lines)), pos) - 1


