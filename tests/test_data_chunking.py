"""Cleaning and chunking one article: the join invariant, sizes, code blocks, boilerplate."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest
from chunk_checks import check_chunks
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blogtune.data.boilerplate import find_boilerplate, strip_boilerplate
from blogtune.data.chunking import chunk_article
from blogtune.data.cleaning import (
    clean_markdown,
    normalize_blank_lines,
    remove_html_comments,
    split_front_matter,
)
from blogtune.data.mdblocks import CLOSE, CODE, OPEN, PROSE, classify_lines, heading_of, split_lines

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- lines
def test_split_lines_roundtrip_only_lf():
    text = "a\r\nb\x0bc\u2028d\n\ne"
    lines = split_lines(text)
    assert "".join(lines) == text
    assert lines == ["a\r\n", "b\x0bc\u2028d\n", "\n", "e"]


def test_classify_fences_and_info_strings():
    text = "p\n````python title=x\n```\nstill code\n````\nafter\n~~~\n# not heading\n~~~~\n```x```\n"
    kinds = classify_lines(split_lines(text))
    assert kinds == [PROSE, OPEN, CODE, CODE, CLOSE, PROSE, OPEN, CODE, CLOSE, PROSE]


def test_unclosed_fence_runs_to_end():
    kinds = classify_lines(split_lines("a\n```\n# x\n"))
    assert kinds == [PROSE, OPEN, CODE]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("# Title\n", (1, "Title")),
        ("### A ###", (3, "A")),
        ("#nospace", (0, "")),
        ("####### seven", (0, "")),
        ("## C#", (2, "C#")),
        ("#", (1, "")),
        ("    # indented code", (0, "")),
    ],
)
def test_heading_of(line, expected):
    assert heading_of(line) == expected


# ---------------------------------------------------------------------------- cleaning
def test_front_matter_title_and_meta():
    text = "---\ntitle: Hello World\ndate: 2024-12-10\ntags: [pg, vacuum]\n---\n# Hello World\n\nBody.\n"
    post = clean_markdown(text, "stem")
    assert post.title == "Hello World"
    assert post.text == "Body.\n"  # the repeated H1 lives in metadata only
    assert str(post.meta["date"]) == "2024-12-10"


def test_front_matter_without_title_uses_first_h1():
    post = clean_markdown("---\ndate: 2024-01-01\n---\n\nIntro\n\n# Real Title\n\nText\n", "stem")
    assert post.title == "Real Title"
    assert post.text == "Intro\n\nText\n"


def test_title_falls_back_to_leading_heading_then_stem():
    post = clean_markdown("## PostgreSQL 膨胀\n\n### 背景\n\ntext\n", "20241210_01")
    assert post.title == "PostgreSQL 膨胀" and post.text == "### 背景\n\ntext\n"
    post = clean_markdown("Intro\n\n## Section\n\ntext\n", "20241210_01")
    assert post.title == "20241210_01" and post.text.startswith("Intro")
    post = clean_markdown("## Lead\n\n# Real\n\ntext\n", "s")
    assert post.title == "Real" and post.text == "## Lead\n\ntext\n"


def test_front_matter_title_keeps_a_different_h1():
    post = clean_markdown("---\ntitle: Meta\n---\n# Different\n\ntext\n", "s")
    assert post.title == "Meta"
    assert post.text.startswith("# Different\n")


def test_h1_inside_code_is_not_a_title():
    post = clean_markdown("```\n# comment\n```\n\n# Title\n\nx\n", "stem")
    assert post.title == "Title"
    assert "# comment" in post.text


def test_broken_yaml_is_kept_as_text_and_noted():
    text = "---\ntitle: [unclosed\n---\n# T\n\nbody\n"
    meta, body, notes = split_front_matter(text)
    assert meta == {} and body == text and notes and "YAML" in notes[0]
    post = clean_markdown(text, "stem")
    assert post.title == "T" and "body" in post.text and post.notes


def test_toml_front_matter():
    meta, body, notes = split_front_matter('+++\ntitle = "Hugo"\n+++\ntext\n')
    assert meta == {"title": "Hugo"} and body == "text\n" and notes == []


def test_rule_and_setext_is_not_front_matter():
    text = "---\nJust words\n---\nmore\n"
    assert split_front_matter(text) == ({}, text, [])


def test_html_comments_removed_outside_code_only():
    text = "a <!-- x --> b\n<!-- more -->\nc\n<!--\nmulti\nline\n-->\n```html\n<!-- keep -->\n```\n"
    out = remove_html_comments(text)
    assert out == "a  b\nc\n```html\n<!-- keep -->\n```\n"
    assert "<div>" in clean_markdown("<div>html is content</div>\n", "s").text


def test_normalize_blank_lines_keeps_code_blank_lines():
    text = "\n\n a\n\n\n\nb  \n```\n\n\n\n```\n\n\n"
    assert normalize_blank_lines(text) == " a\n\nb  \n```\n\n\n\n```\n"
    assert normalize_blank_lines(" \n\t\n") == ""


# ---------------------------------------------------------------------------- boilerplate
FOOTER = "---\n\n#### [My PostgreSQL course](https://example.com/course)\n\n![wechat](../pic/qr.jpg)\n"


def _posts_with_footer(n: int = 6) -> list[str]:
    return [
        f"## 背景\n\nUnique text number {i}.\n\n```\n![wechat](../pic/qr.jpg)\n```\n\n{FOOTER}"
        for i in range(n)
    ]


def test_find_boilerplate_footer_not_common_heading():
    found = find_boilerplate(_posts_with_footer())
    assert set(found) == {
        "![wechat](../pic/qr.jpg)",
        "#### [My PostgreSQL course](https://example.com/course)",
    }
    assert "## 背景" not in found  # common structure, no link: not boilerplate


def test_find_boilerplate_thresholds():
    texts = ["footer line\n"] * 2 + ["other 1\n", "other 2\n"]
    assert find_boilerplate(texts, min_fraction=0.5, min_posts=3) == []
    assert find_boilerplate(texts, min_fraction=0.5, min_posts=2) == ["footer line"]
    assert find_boilerplate(texts, min_fraction=0.75, min_posts=2) == []
    assert find_boilerplate(["x\n", "x\n"], min_posts=3) == []


def test_strip_boilerplate_removes_footer_and_dangling_rule_keeps_code():
    bp = find_boilerplate(_posts_with_footer())
    out = strip_boilerplate(_posts_with_footer()[0], bp)
    assert out == "## 背景\n\nUnique text number 0.\n\n```\n![wechat](../pic/qr.jpg)\n```\n"


def test_strip_boilerplate_drops_headings_it_emptied():
    text = "### 作者\n\ndigoal\n\n### 日期\n\n2024-12-10\n\n----\n\n## 背景\n\ntext\n"
    out = strip_boilerplate(text, ["digoal"])
    assert out == "### 日期\n\n2024-12-10\n\n----\n\n## 背景\n\ntext\n"
    assert strip_boilerplate(text, []) == text


def test_find_boilerplate_on_many_posts():
    # Its speed on 5,000 posts is measured in bench/wallclock_limits.py.
    texts = [
        f"# T{i}\n\n" + "\n\n".join(f"para {i} {j} " * 8 for j in range(30)) + "\n\n" + FOOTER
        for i in range(300)
    ]
    bp = find_boilerplate(texts)
    stripped = [strip_boilerplate(t, bp) for t in texts]
    assert len(bp) == 2 and "qr.jpg" not in stripped[0]


# ---------------------------------------------------------------------------- chunking
DOC = """Intro paragraph.

## 原理

Some words here.

### 索引膨胀

Text under sub heading.

```sql
-- # not a heading
SELECT 1;
```

## 实践

Last words.
"""


def test_chunk_heading_paths_and_join():
    chunks = chunk_article("a/b", "T", DOC, max_chars=60)
    check_chunks(DOC, chunks, 60)
    by_start = {c.text.split("\n", 1)[0]: c.heading_path for c in chunks}
    # Small sections pack together; a heading sticks to the text after it.
    assert by_start == {
        "Intro paragraph.": [],
        "### 索引膨胀": ["原理", "索引膨胀"],
        "```sql": ["原理", "索引膨胀"],
    }  # "# not a heading" is code
    chunks = chunk_article("a/b", "T", DOC, max_chars=30)
    check_chunks(DOC, chunks, 30)
    by_start = {c.text.split("\n", 1)[0]: c.heading_path for c in chunks}
    assert by_start["## 原理"] == ["原理"]
    assert by_start["## 实践"] == ["实践"]
    assert all(c.article_id == "a/b" and c.title == "T" for c in chunks)
    assert chunks[0].to_dict() == {
        "article_id": "a/b",
        "title": "T",
        "heading_path": [],
        "part": 1,
        "parts": len(chunks),
        "text": chunks[0].text,
        "lang": "default",
        "added_head": 0,
        "added_tail": 0,
    }


def test_small_text_is_one_chunk_and_sections_pack():
    chunks = chunk_article("x", "T", DOC, max_chars=10_000)
    assert len(chunks) == 1 and chunks[0].text == DOC
    chunks = chunk_article("x", "T", "## A\n\na\n\n## B\n\nb\n\n## C\n\n" + "c" * 30 + "\n", max_chars=20)
    assert [c.text for c in chunks][:1] == ["## A\n\na\n\n## B\n\nb\n\n"]


def test_code_block_that_fits_is_never_cut():
    code = "```python\n" + "".join(f"x{i} = {i}\n\n" for i in range(8)) + "```\n"
    text = "para one is here\n\n" + code + "\nafter\n"
    max_chars = len(code) + 2
    chunks = chunk_article("x", "T", text, max_chars)
    check_chunks(text, chunks, max_chars)
    assert any(code in c.text for c in chunks)


def test_code_block_filling_a_chunk_keeps_trailing_blank_line():
    code = "```\n" + "a" * 20 + "\n```\n"
    text = code + "\n" + "next\n"
    chunks = chunk_article("x", "T", text, max_chars=len(code))
    check_chunks(text, chunks, len(code))
    assert chunks[0].text == code + "\n"  # over by whitespace only, block not cut


def test_long_code_block_split_at_lines():
    code = "```\n" + "".join(f"line {i:03d}\n" for i in range(100)) + "```\n"
    text = "# Code\n\n" + code
    chunks = chunk_article("x", "T", text, max_chars=120)
    check_chunks(text, chunks, 120)
    assert len(chunks) > 5
    assert all(len(c.text) <= 120 for c in chunks)
    assert all(c.text.endswith("\n") for c in chunks)  # never inside a line


def test_single_long_code_line_may_exceed():
    long_line = "x" * 300
    text = f"```\n{long_line}\n```\n\nprose\n"
    chunks = chunk_article("x", "T", text, max_chars=100)
    check_chunks(text, chunks, 100)
    assert any(c.text.strip() == f"```\n{long_line}\n```" for c in chunks)  # kept with its fences


def test_long_prose_line_split_at_sentences():
    text = "这是第一句话。" * 40 + "\n"
    chunks = chunk_article("x", "T", text, max_chars=50)
    check_chunks(text, chunks, 50)
    assert all(c.text.endswith("。") or c.text.endswith("\n") for c in chunks)
    words = " ".join(["word"] * 100) + "\n"
    chunks = chunk_article("x", "T", words, max_chars=42)
    check_chunks(words, chunks, 42)
    assert all(c.text.startswith("word") for c in chunks)


def test_whitespace_only_text_has_no_chunks_and_bad_max():
    assert chunk_article("x", "T", " \n\n\t", 10) == []
    with pytest.raises(ValueError):
        chunk_article("x", "T", "a", 0)


def test_leading_blank_lines_and_crlf():
    text = "\n\n\r\n## A\r\n\r\ntext text\r\n\r\n## B\r\nmore\r\n"
    for m in (1, 5, 12, 100):
        check_chunks(text, chunk_article("x", "T", text, m), m)


_LINES = st.one_of(
    st.sampled_from(
        [
            "",
            "",
            "",
            "# H1",
            "## 原理",
            "### 索引膨胀",
            "#### deep ##",
            "```",
            "```python",
            "~~~",
            "````",
            "~~~~ info",
            "    ```",
            "<!-- c -->",
            "- item",
            "> quote",
            "---",
            "   ",
            "\t",
            "\r",
            "SELECT 1;",
            "中文句子，带标点。还有一句！",
            "a. b? c!",
            "> ```sql",
            "> quoted",
            "- ```sh",
            "  ```",
            "===",
            "| a | b |",
            "|---|---|",
            "<div>",
            "1. item",
        ]
    ),
    st.text(alphabet=st.sampled_from("ab #`~\t 中文。，x\r-"), max_size=40),
    st.builds(
        lambda n, w: " ".join([w] * n), st.integers(1, 30), st.sampled_from(["word", "字", "long-token"])
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(_LINES, max_size=40),
    max_chars=st.integers(1, 200),
    sep=st.sampled_from(["\n", "\r\n"]),
    end=st.sampled_from(["", "\n", "\n\n"]),
)
def test_chunk_invariants_property(lines, max_chars, sep, end):
    text = sep.join(lines) + end
    check_chunks(text, chunk_article("id", "T", text, max_chars), max_chars)


@settings(max_examples=150, deadline=None)
@given(lines=st.lists(_LINES, max_size=40), max_chars=st.integers(20, 400))
def test_cleaned_text_invariants_property(lines, max_chars):
    text = clean_markdown("\n".join(lines), "stem").text
    check_chunks(text, chunk_article("id", "T", text, max_chars), max_chars)
    assert normalize_blank_lines(text) == text  # cleaning is stable


# ---------------------------------------------------------------------------- script
def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_chunk_script_outputs(tmp_path):
    blog = tmp_path / "blog"
    (blog / "2024").mkdir(parents=True)
    (blog / "2024" / "a.md").write_text(
        "---\ntitle: A\ndate: 2024-01-02\n---\n## S\n\n" + "alpha " * 50 + "\n"
    )
    (blog / "2024" / "b.md").write_text("# B\n\nbeta\n")
    (blog / "c.md").write_bytes(b"\xff\xfe junk")
    (blog / "d.md").write_text("# B\n\nbeta\n")
    chunk = _load_script("chunk")
    posts = sorted(blog.rglob("*.md"))
    out = tmp_path / "out"
    chunk.run(
        posts,
        blog,
        out / "chunks.jsonl",
        out / "articles.tsv",
        out / "rejects.tsv",
        max_chars=100,
        index_missing=["2024/gone.md"],
    )
    rows = [json.loads(line) for line in (out / "chunks.jsonl").read_text().splitlines()]
    assert [(r["article_id"], r["part"]) for r in rows] == sorted((r["article_id"], r["part"]) for r in rows)
    assert set(rows[0]) == {
        "article_id", "title", "heading_path", "part", "parts", "text", "lang", "added_head", "added_tail"
    }
    arts = pd.read_csv(out / "articles.tsv", sep="\t", keep_default_na=False)
    assert list(arts.columns) == chunk.ARTICLE_COLUMNS
    assert list(arts["article_id"]) == ["2024/a", "2024/b"]
    assert arts.loc[0, "date"] == "2024-01-02" and arts.loc[1, "date"] == ""
    rej = pd.read_csv(out / "rejects.tsv", sep="\t")
    assert list(rej.columns) == ["path", "reason"]
    reasons = dict(zip(rej["path"], rej["reason"], strict=True))
    assert reasons["d.md"] == "duplicate of 2024/b"
    assert reasons["c.md"].startswith("not UTF-8")
    assert reasons["2024/gone.md"] == "listed in index but missing"


def test_chunk_script_empty_rejects_has_header(tmp_path):
    blog = tmp_path / "blog"
    blog.mkdir()
    (blog / "a.md").write_text("a\n")
    (blog / "b.md").write_text("b\n")
    chunk = _load_script("chunk")
    chunk.run(
        [blog / "a.md", blog / "b.md"], blog, tmp_path / "c.jsonl", tmp_path / "a.tsv", tmp_path / "r.tsv", 50
    )
    assert (tmp_path / "r.tsv").read_text() == "path\treason\n"
