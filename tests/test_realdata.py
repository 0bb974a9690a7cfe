"""Data from real posts (issue 13, items 0-4 and 10; issue 10's cleaning module): CommonMark
blocks, footers in part of the posts, balanced code fences, whitespace, per-article language,
NFC article ids. Each test here failed on the code before these changes."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import unicodedata
from pathlib import Path

import pandas as pd
from chunk_checks import check_chunks
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blogtune.data.boilerplate import remove_boilerplate
from blogtune.data.chunking import chunk_article, join_chunks
from blogtune.data.cleaning import article_language, clean_markdown
from blogtune.data.mdblocks import parse_blocks
from blogtune.data.posts import article_id_for, discover_posts, load_articles
from blogtune.data.splitting import split_of
from blogtune.model.formatting import DEFAULT_PROMPTS, fit_chunk, user_prompt

ROOT = Path(__file__).resolve().parents[1]
FRACTIONS = {"train": 0.8, "valid": 0.1, "test": 0.1}


def _chunk_script():
    spec = importlib.util.spec_from_file_location("_script_chunk_rd", ROOT / "scripts" / "chunk.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_chunk(blog: Path, out: Path, max_chars: int = 1024) -> tuple[list[dict], pd.DataFrame, pd.DataFrame]:
    _chunk_script().run(
        discover_posts(blog, exclude=[]), blog, out / "chunks.jsonl", out / "articles.tsv", out / "rejects.tsv",
        max_chars=max_chars, boilerplate_out=out / "boilerplate.tsv",
    )  # fmt: skip
    rows = [json.loads(line) for line in (out / "chunks.jsonl").read_text().splitlines()]
    arts = pd.read_csv(out / "articles.tsv", sep="\t", keep_default_na=False)
    removed = pd.read_csv(out / "boilerplate.tsv", sep="\t", keep_default_na=False)
    return rows, arts, removed


# ---------------------------------------------------------------------------- 0: CommonMark blocks
def test_chunker_follows_commonmark_blocks():
    # An indented "```" is code, not a fence (the old line rules took the rest of the post for
    # code); a setext heading is a heading.
    text = "    ```\n    indented code\n\nSetext heading\n==============\n\nUnder it.\n\n## ATX\n\nMore.\n"
    chunks = chunk_article("a", "T", text, max_chars=40)
    check_chunks(text, chunks, 40)
    paths = {c.source.split("\n", 1)[0]: c.heading_path for c in chunks}
    assert paths["Setext heading"] == ["Setext heading"]
    assert paths["## ATX"] == ["Setext heading", "ATX"]  # "===" makes an H1


def test_list_is_cut_between_items_that_fit():
    items = [f"- item {i} first paragraph\n\n  item {i} second paragraph\n" for i in range(4)]
    text = "Intro.\n\n" + "\n".join(items)
    max_chars = 2 * len(items[0]) + 4  # two items fit, the list does not
    chunks = chunk_article("a", "T", text, max_chars)
    check_chunks(text, chunks, max_chars)
    for c in chunks[1:]:
        assert c.source.startswith("- item"), c.source  # never between an item's paragraphs


_WORDS = st.sampled_from(["alpha", "beta", "索引", "膨胀。", "SELECT", "x", "long-token", "a.", "b?"])
_PHRASE = st.lists(_WORDS, min_size=1, max_size=12).map(" ".join)


@st.composite
def _block(draw) -> str:
    kind = draw(st.sampled_from(["para", "heading", "setext", "list", "quote", "fence", "table", "indented", "html"]))
    if kind == "para":
        return "\n".join(draw(st.lists(_PHRASE, min_size=1, max_size=4)))
    if kind == "heading":
        return "#" * draw(st.integers(1, 4)) + " " + draw(_PHRASE)
    if kind == "setext":
        return draw(_PHRASE) + "\n" + draw(st.sampled_from(["===", "---"]))
    if kind == "list":
        bullet = draw(st.sampled_from(["-", "*", "1."]))
        sep = draw(st.sampled_from(["\n", "\n\n"]))
        items = draw(st.lists(_PHRASE, min_size=1, max_size=5))
        nested = draw(st.booleans())
        body = sep.join(f"{bullet} {p}" for p in items)
        return body + ("\n\n   ```sh\n   echo nested\n   ```" if nested else "")
    if kind == "quote":
        inner = draw(st.lists(_PHRASE, min_size=1, max_size=4))
        fence = draw(st.booleans())
        return "\n".join(f"> {p}" for p in inner) + ("\n> ```\n> quoted code\n> ```" if fence else "")
    if kind == "fence":
        marker = draw(st.sampled_from(["```", "~~~", "````"]))
        info = draw(st.sampled_from(["", "sql", "python title=x.py", "console"]))
        body = draw(st.lists(st.one_of(_PHRASE, st.just(""), st.just("# not a heading")), max_size=30))
        closed = draw(st.integers(0, 9)) > 0
        return "\n".join([marker + info, *body] + ([marker] if closed else []))
    if kind == "table":
        rows = draw(st.lists(_PHRASE, min_size=1, max_size=6))
        return "| a | b |\n|---|---|\n" + "\n".join(f"| {r} | 1 |" for r in rows)
    if kind == "indented":
        return "\n".join("    " + p for p in draw(st.lists(_PHRASE, min_size=1, max_size=5)))
    return "<div>\n" + draw(_PHRASE) + "\n</div>"


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.lists(_block(), max_size=12), max_chars=st.integers(8, 300), end=st.sampled_from(["", "\n"]))
def test_chunks_of_generated_markdown_property(blocks, max_chars, end):
    """No block that fits is cut, nothing lost or duplicated, every chunk balanced."""
    text = "\n\n".join(blocks) + end
    check_chunks(text, chunk_article("id", "T", text, max_chars), max_chars)


# ---------------------------------------------------------------------------- 1: footers in part of the posts
FOOTER6 = (
    "---\n\n#### [我的项目](https://example.com/p)\n#### [关于我](https://example.com/me)\n"
    "#### [PostgreSQL 课程](https://example.com/c)\n![qr](../pic/qr.png)\n本文采用 CC BY 协议。\n"
)
SENTENCE = "This turned out to be the hard part."


def _generated_blog(root: Path, n: int = 20) -> Path:
    """n posts: 30% end with the same 6-line footer, another 30% share one sentence by chance."""
    root.mkdir(parents=True)
    for i in range(n):
        body = f"# Post {i}\n\n## Setup {i}\n\nUnique words number {i} about topic {i * 7}.\n\n"
        if i % 10 in (3, 4, 5):
            body += f"{SENTENCE}\n\n"
        body += f"Closing thought {i}.\n"
        if i % 10 in (0, 1, 2):
            body += "\n" + FOOTER6
        (root / f"{i:02d}.md").write_text(body)
    return root


def test_footer_in_30_percent_of_posts_goes_sentence_stays(tmp_path):
    blog = _generated_blog(tmp_path / "blog")
    rows, arts, removed = run_chunk(blog, tmp_path / "out")
    assert len(arts) == 20
    text = "".join(r["text"] for r in rows)
    assert "关于我" not in text and "qr.png" not in text and "CC BY" not in text
    assert text.count(SENTENCE) == 6
    assert text.count("Closing thought") == 20  # what precedes the footer stays
    # What went, with counts, for the report.
    assert list(removed.columns) == ["kind", "posts", "lines", "text"]
    assert removed.to_dict("records") == [
        {"kind": "tail", "posts": 6, "lines": 6, "text": "\\n".join(x for x in FOOTER6.splitlines() if x)}
    ]


def test_header_block_keeps_the_heading_that_starts_the_post_text():
    head = "> 作者: digoal\n> 日期: 2024\n> 标签: PostgreSQL\n\n## 背景\n\n"
    texts = [head + f"正文 {i}。\n" for i in range(4)] + [f"## 背景\n\n别的 {i}。\n" for i in range(4)]
    out, removed = remove_boilerplate(texts, min_fraction=0.9, min_posts=3)
    assert out[0] == "## 背景\n\n正文 0。\n"
    assert [r.kind for r in removed[0]] == ["head"] and not removed[5]


# ---------------------------------------------------------------------------- 2: balanced code fences
def test_long_code_block_pieces_reopen_and_close_their_fence():
    code = "```sql\n" + "".join(f"SELECT {i} FROM pg_stat_activity;\n" for i in range(60)) + "```\n"
    text = "## 查询\n\n" + code + "\n结束。\n"
    chunks = chunk_article("a", "T", text, max_chars=300)
    check_chunks(text, chunks, 300)
    code_chunks = [c for c in chunks if "SELECT" in c.text]
    assert len(code_chunks) > 3
    for c in code_chunks:
        fences = parse_blocks(c.text).fences
        assert fences and all(f.closed for f in fences), c.text
        assert fences[0].info == "sql"
        assert len(c.text) <= 300
    assert "".join(c.source for c in chunks) == text  # the invariant, on the text without added fences
    assert join_chunks(chunks) == text


def test_fit_chunk_keeps_fences_balanced():
    code = "```console\n" + "".join(f"$ psql -c 'select {i}'\n" for i in range(80)) + "```\n"
    chunk = {"article_id": "a", "title": "T", "heading_path": [], "part": 1, "parts": 1, "text": code}
    pieces = fit_chunk(chunk, lambda c: 10 + len(c["text"]) // 4, budget=120)
    assert len(pieces) > 2
    for p in pieces:
        fences = parse_blocks(p["text"]).fences
        assert len(fences) == 1 and fences[0].closed and fences[0].info == "console", p["text"]
        assert 10 + len(p["text"]) // 4 <= 120


# ---------------------------------------------------------------------------- 3: whitespace
def test_cleaning_strips_trailing_whitespace_outside_code_and_counts_it(tmp_path):
    raw = "# T\n\nline with hard break  \nnext\t \n\n\n\n\npara   \n\n```\ncode   \n\n\n\nmore  \n```\n"
    post = clean_markdown(raw, "t")
    assert post.text == "line with hard break\nnext\n\npara\n\n```\ncode   \n\n\n\nmore  \n```\n"
    assert post.whitespace_saved == len(raw) - len("# T\n") - len(post.text)
    blog = tmp_path / "blog"
    blog.mkdir()
    (blog / "a.md").write_text(raw)
    (blog / "b.md").write_text("# B\n\nplain\n")
    _, arts, _ = run_chunk(blog, tmp_path / "out")
    assert dict(zip(arts["article_id"], arts["whitespace_saved"], strict=True)) == {"a": post.whitespace_saved, "b": 1}  # b: the blank line its title left


# ---------------------------------------------------------------------------- 4: language per article
def test_language_is_decided_per_article_from_prose(tmp_path):
    rows_sql = "".join(f"SELECT relname, n_dead_tup FROM pg_stat_user_tables -- {i}\n" for i in range(40))
    sql = "```sql\n" + rows_sql + "```\n"
    post = f"# 索引膨胀的处理\n\n## 背景\n\n表膨胀以后查询变慢，下面用 SQL 看一看。\n\n{sql}\n## 小结\n\n定期检查。\n"
    blog = tmp_path / "blog"
    blog.mkdir()
    (blog / "zh.md").write_text(post)
    (blog / "en.md").write_text("# Bloat\n\n" + "Tables bloat when rows are deleted; here is how to see it.\n\n" + sql)
    rows, arts, _ = run_chunk(blog, tmp_path / "out", max_chars=600)
    zh = [r for r in rows if r["article_id"] == "zh"]
    assert len(zh) >= 3 and any(r["text"].count("SELECT") > 5 for r in zh)
    assert {r["lang"] for r in zh} == {"zh"}
    assert all(user_prompt(r, DEFAULT_PROMPTS).startswith("请写出") for r in zh)
    assert {r["lang"] for r in rows if r["article_id"] == "en"} == {"default"}
    assert dict(zip(arts["article_id"], arts["lang"], strict=True)) == {"en": "default", "zh": "zh"}
    assert article_language("索引膨胀", sql) == "zh"  # the title alone decides when code is all there is


# ---------------------------------------------------------------------------- 10: NFC article ids
def test_article_id_is_nfc_whatever_the_file_system(tmp_path):
    name = "数据库/café-vacuum"
    nfc, nfd = unicodedata.normalize("NFC", name), unicodedata.normalize("NFD", name)
    assert nfc != nfd
    blog = tmp_path / "blog"
    for form in (nfc, nfd):
        path = blog / f"{form}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# VACUUM\n\nthe same post, {form == nfc}\n")
    ids = {article_id_for(blog / f"{form}.md", blog) for form in (nfc, nfd)}
    assert ids == {nfc}
    assert split_of(article_id_for(blog / f"{nfd}.md", blog), FRACTIONS) == split_of(nfc, FRACTIONS)
    articles, rejects = load_articles(discover_posts(blog), blog, near_duplicates=False)
    assert [a.article_id for a in articles] == [nfc]
    assert [r.kind for r in rejects] == ["duplicate-id"]


# ---------------------------------------------------------------------------- issue 10: module boundary
def test_reading_a_post_does_not_import_the_chunker():
    code = "import sys, blogtune.data.posts; assert 'blogtune.data.chunking' not in sys.modules, 'chunker imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
