"""Finding, selecting and reading posts: the blog folder is messy, the output must not be."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from blogtune.data.posts import (
    Article,
    Reject,
    article_id_for,
    discover_posts,
    load_articles,
    read_post,
    select_from_index,
)


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


@pytest.fixture
def blog(tmp_path: Path) -> Path:
    root = tmp_path / "blog"
    write(root / "README.md", "# Index\n")
    write(root / "202412" / "20241210_01.md", "# One\n\ntext one\n")
    write(root / "202412" / "20241210_02.md", "# Two\n\ntext two\n")
    write(root / "202411" / "README.md", "# nested readme\n\nkept\n")
    write(root / "202411" / "notes.txt", "not markdown")
    write(root / ".git" / "x.md", "# hidden\n")
    write(root / "drafts" / ".wip.md", "# hidden file\n")
    return root


# ---------------------------------------------------------------------------- discover
def test_discover_sorted_excludes_root_readme_and_hidden(blog: Path):
    got = [p.relative_to(blog).as_posix() for p in discover_posts(blog)]
    assert got == ["202411/README.md", "202412/20241210_01.md", "202412/20241210_02.md"]
    assert all(p.is_relative_to(blog) for p in discover_posts(blog))


def test_discover_pattern_and_exclude_globs(blog: Path):
    rel = lambda ps: [p.relative_to(blog).as_posix() for p in ps]  # noqa: E731
    assert rel(discover_posts(blog, "**/*.md", ["**/README.md"])) == [
        "202412/20241210_01.md",
        "202412/20241210_02.md",
    ]
    assert rel(discover_posts(blog, "202412/*_0[1].md", [])) == ["202412/20241210_01.md"]
    assert rel(discover_posts(blog, "*.md", [])) == ["README.md"]
    assert rel(discover_posts(blog, "**/*.md", ["202412/**"])) == ["202411/README.md", "README.md"]


def test_discover_symlinks(blog: Path, tmp_path: Path, caplog):
    outside = write(tmp_path / "secret.md", "# secret\n")
    os.symlink(outside, blog / "leak.md")
    os.symlink(blog / "202412" / "20241210_01.md", blog / "alias.md")
    os.symlink(tmp_path, blog / "linkdir")  # a folder link: never entered
    os.symlink(blog / "202412", blog / "inner_linkdir")
    os.symlink(blog / "missing.md", blog / "broken.md")
    got = [p.relative_to(blog).as_posix() for p in discover_posts(blog)]
    assert "leak.md" not in got and "broken.md" not in got
    assert "alias.md" in got
    assert not any(g.startswith(("linkdir/", "inner_linkdir/")) for g in got)
    assert "outside the blog folder" in caplog.text


def test_discover_finds_thousands_of_posts(tmp_path: Path):
    root = tmp_path / "big"
    for m in range(50):
        d = root / f"2024{m:02d}"
        d.mkdir(parents=True)
        for i in range(100):
            (d / f"post_{i:03d}.md").write_bytes(b"x")
    posts = discover_posts(root)  # its speed: bench/wallclock_limits.py
    assert len(posts) == 5000


# ---------------------------------------------------------------------------- index
INDEX = """# My blog

Intro with a [link](202412/20241210_01.md) before the marker: ignored. See ### 文章列表 below.

### 文章列表

##### 202412/20241210_02.md   [《PolarDB 新特性》](202412/20241210_02.md)
##### 202412/20241210_01.md   [《PostgreSQL vacuum》](202412/20241210_01.md)
##### 202412/20241209_01.md   [《polardb gone》](202412/20241209_01.md)
##### dup   [《PolarDB again》](./202412/20241210_02.md#section)
##### escape   [《PolarDB evil》](../../etc/passwd.md)
##### web   [《PolarDB web》](https://example.com/x.md)
"""


def test_select_from_index_marker_keyword_missing(blog: Path):
    write(blog / "README.md", INDEX)
    sel = select_from_index(blog, "README.md", "### 文章列表", "polardb")
    assert [p.relative_to(blog).as_posix() for p in sel.posts] == ["202412/20241210_02.md"]
    assert sel.missing == ["202412/20241209_01.md"]
    assert sel.titles == {"202412/20241210_02.md": "《PolarDB 新特性》"}
    assert sel.outside == ["../../etc/passwd.md"]


def test_select_from_index_no_keyword_keeps_order(blog: Path):
    write(blog / "README.md", INDEX)
    sel = select_from_index(blog, "README.md", "### 文章列表", None)
    assert [p.name for p in sel.posts] == ["20241210_02.md", "20241210_01.md"]
    sel = select_from_index(blog, "README.md", None, None)  # from the top: intro link counts first
    assert [p.name for p in sel.posts] == ["20241210_01.md", "20241210_02.md"]


def test_select_from_index_marker_missing_raises(blog: Path):
    write(blog / "README.md", INDEX)
    with pytest.raises(ValueError, match=r"README\.md.*'## Nope'"):
        select_from_index(blog, "README.md", "## Nope", None)


def test_select_from_index_links_relative_to_index(blog: Path, tmp_path: Path):
    write(blog / "202412" / "index.md", "- [a](20241210_01.md)\n- [b](/202411/README.md)\n")
    os.symlink(write(tmp_path / "out.md", "x"), blog / "202412" / "evil.md")
    write(blog / "202412" / "index.md", "- [a](20241210_01.md)\n- [b](/202411/README.md)\n- [c](evil.md)\n")
    sel = select_from_index(blog, "202412/index.md")
    assert [p.relative_to(blog).as_posix() for p in sel.posts] == [
        "202412/20241210_01.md",
        "202411/README.md",
    ]
    assert sel.outside == ["evil.md"]


# ---------------------------------------------------------------------------- ids
def test_article_id_for(blog: Path):
    assert article_id_for(blog / "202412" / "20241210_01.md", blog) == "202412/20241210_01"
    assert article_id_for(Path("blog/a/b.MD"), Path("blog")) == "a/b"
    assert article_id_for(Path("blog/a/b.txt"), Path("blog")) == "a/b.txt"


# ---------------------------------------------------------------------------- read_post
def reason(result) -> str:
    assert isinstance(result, Reject), result
    return result.reason


def test_read_post_good(blog: Path):
    p = write(
        blog / "p.md",
        "\ufeff---\r\ntitle: T\r\ndate: 2024-12-10\r\ntags: a, b\r\n---\r\n# T\r\n\r\nline1\r\nline2\r\n",
    )
    a = read_post(p, blog)
    assert isinstance(a, Article)
    assert (a.article_id, a.path, a.title, a.date, a.tags) == ("p", "p.md", "T", "2024-12-10", ["a", "b"])
    assert a.text == "line1\nline2\n"  # BOM and CR gone, title in metadata
    assert len(a.sha256) == 64


def test_read_post_rejects(blog: Path):
    assert reason(read_post(write(blog / "e.md", b""), blog)) == "empty or whitespace only"
    assert reason(read_post(write(blog / "w.md", b" \n\t\r\n"), blog)) == "empty or whitespace only"
    assert reason(read_post(write(blog / "bom.md", b"\xef\xbb\xbf\n"), blog)) == "empty or whitespace only"
    assert reason(read_post(write(blog / "b.md", b"PNG\x00\x01\x02data"), blog)).startswith("binary")
    ctrl = bytes(range(1, 9)) * 20 + b"some text"
    assert reason(read_post(write(blog / "c.md", ctrl), blog)).startswith("binary")
    bad = "héllo".encode("latin-1")
    assert reason(read_post(write(blog / "l1.md", bad), blog)) == "not UTF-8 (byte 0xe9 at offset 1)"
    assert reason(read_post(write(blog / "u16.md", "hi".encode("utf-16")), blog)).startswith("not UTF-8")
    assert (
        reason(read_post(write(blog / "c2.md", "<!-- only a comment -->\n"), blog))
        == "no text left after cleaning"
    )
    assert (
        reason(read_post(write(blog / "fm.md", "---\ntitle: x\n---\n# x\n"), blog))
        == "no text left after cleaning"
    )
    assert reason(read_post(blog / "nope.md", blog)).startswith("unreadable")


def test_read_post_huge_single_line_rejected(blog: Path):
    p = blog / "huge.md"
    with open(p, "wb") as fh:  # sparse: 50 MB without writing 50 MB
        fh.write(b"a")
        fh.truncate(50_000_000)
    r = read_post(p, blog)  # rejected from its size, unread (timed in bench/wallclock_limits.py)
    assert reason(r).startswith("too large (50,000,000 bytes")
    assert reason(read_post(write(blog / "small.md", "x" * 200), blog, max_bytes=100)).startswith("too large")


def test_read_post_symlink_outside(blog: Path, tmp_path: Path):
    os.symlink(write(tmp_path / "o.md", "# o\n\nx\n"), blog / "o.md")
    assert reason(read_post(blog / "o.md", blog)).startswith("outside the blog folder")


def test_read_post_broken_front_matter_keeps_post(blog: Path, caplog):
    a = read_post(write(blog / "y.md", "---\ntitle: [oops\n---\n\nbody\n"), blog)
    assert isinstance(a, Article) and "body" in a.text and a.notes
    assert "not valid YAML" in caplog.text


def test_read_post_never_writes_to_blog(blog: Path):
    before = {p: p.stat().st_mtime_ns for p in blog.rglob("*")}
    load_articles(discover_posts(blog), blog)
    assert {p: p.stat().st_mtime_ns for p in blog.rglob("*")} == before


# ---------------------------------------------------------------------------- load_articles
def test_load_articles_duplicates_and_bad_neighbours(blog: Path):
    write(blog / "z" / "copy.md", "# Two\n\ntext two\n")  # identical to 202412/20241210_02
    write(blog / "a" / "near.md", "# One!\n\nText, one.\n")  # same words as 202412/20241210_01
    write(blog / "bad.md", b"\xff\xfe\x00")
    write(blog / "empty.md", "")
    articles, rejects = load_articles(discover_posts(blog), blog, boilerplate_min_fraction=None)
    assert [a.article_id for a in articles] == ["202411/README", "202412/20241210_01", "202412/20241210_02"]
    got = {r.path: r.reason for r in rejects}
    assert got == {
        "a/near.md": "near-duplicate of 202412/20241210_01",
        "bad.md": "not UTF-8 (UTF-16 byte order mark)",
        "empty.md": "empty or whitespace only",
        "z/copy.md": "duplicate of 202412/20241210_02",
    }
    assert [r.path for r in rejects] == sorted(got)


def test_load_articles_near_duplicate_keeps_first_id(tmp_path: Path):
    root = tmp_path / "b"
    write(root / "b.md", "Hello,   world!\n\nSecond para.\n")
    write(root / "a.md", "hello world\n\nsecond para\n")
    articles, rejects = load_articles(discover_posts(root, exclude=[]), root)
    assert [a.article_id for a in articles] == ["a"]
    assert [(r.path, r.reason, r.kind) for r in rejects] == [
        ("b.md", "near-duplicate of a", "near-duplicate")
    ]
    articles, rejects = load_articles(discover_posts(root, exclude=[]), root, near_duplicates=False)
    assert len(articles) == 2 and rejects == []


def test_load_articles_strips_boilerplate(tmp_path: Path):
    root = tmp_path / "b"
    footer = "\n---\n\n#### [Support me](https://example.com/donate)\n"
    for i in range(4):
        write(root / f"p{i}.md", f"# P{i}\n\nContent {i}.\n{footer}")
    write(root / "only_footer.md", f"# F\n{footer}")
    articles, rejects = load_articles(discover_posts(root, exclude=[]), root)
    assert [a.text for a in articles] == [f"Content {i}.\n" for i in range(4)]
    assert [(r.path, r.kind) for r in rejects] == [("only_footer.md", "boilerplate-only")]


def test_load_articles_survives_a_crashing_post(blog: Path, monkeypatch):
    import blogtune.data.posts as posts

    real = posts.read_post

    def flaky(path, blog_dir, max_bytes):
        if Path(path).name == "20241210_01.md":
            raise RuntimeError("boom")
        return real(path, blog_dir, max_bytes)

    monkeypatch.setattr(posts, "read_post", flaky)
    articles, rejects = load_articles(discover_posts(blog), blog)
    assert [a.article_id for a in articles] == ["202411/README", "202412/20241210_02"]
    assert rejects[0].reason.startswith("error (RuntimeError: boom)")
