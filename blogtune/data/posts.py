"""Find, select and read blog posts. The blog folder is only ever opened for reading."""

from __future__ import annotations

import codecs
import hashlib
import logging
import os
import posixpath
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from blogtune.data.boilerplate import Removed, remove_boilerplate
from blogtune.data.cleaning import article_language, clean_markdown, meta_date, meta_tags

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 5_000_000
# Bytes that do not occur in text (tab, LF, FF, CR and ESC are allowed).
_CONTROL = bytes([*range(0x00, 0x09), 0x0B, *range(0x0E, 0x1B), *range(0x1C, 0x20), 0x7F])
_NOT_CONTROL = bytes(b for b in range(256) if b not in _CONTROL)
_MAX_CONTROL_RATIO = 0.05
_LINK = re.compile(r"\[([^\]\n]*)\]\(\s*(<[^>\n]*>|[^)\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:|//")
_NOT_WORD = re.compile(r"[\W_]+")


# ---------------------------------------------------------------------------- discovery
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Glob on "/"-separated relative paths: ``**`` spans folders, ``*`` and ``?`` do not."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (j := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : j].replace("\\", "\\\\")
            out.append("[^" + body[1:] + "]" if body.startswith("!") else "[" + body + "]")
            i = j + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z", re.S)


def discover_posts(
    blog_dir: Path, pattern: str = "**/*.md", exclude: Sequence[str] = ("README.md",)
) -> list[Path]:
    """Post files under `blog_dir` matching `pattern`, minus `exclude` (globs relative to
    `blog_dir`: "README.md" is only the root one, "**/README.md" any), sorted by relative path.

    Hidden files and folders (".git") are skipped. Symlinked folders are not entered; a
    symlinked file is kept only if it resolves to a file inside the blog folder.
    """
    blog_dir = Path(blog_dir)
    root = blog_dir.resolve()
    want = _glob_regex(pattern)
    skip = [_glob_regex(p) for p in exclude]
    found: list[str] = []
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        try:
            with os.scandir(blog_dir / rel_dir) as entries:
                listing = list(entries)
        except OSError as exc:
            log.warning("cannot list %s: %s", blog_dir / rel_dir, exc)
            continue
        for entry in listing:
            if entry.name.startswith("."):
                continue
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if entry.is_dir(follow_symlinks=False):
                stack.append(rel)
                continue
            if not want.match(rel) or any(s.match(rel) for s in skip):
                continue
            if entry.is_symlink():
                target = Path(entry.path).resolve()
                if target.is_dir():
                    continue
                if not target.is_relative_to(root) or not target.is_file():
                    log.warning("skipping %s: symlink to %s, outside the blog folder or missing", rel, target)
                    continue
            elif not entry.is_file(follow_symlinks=False):
                continue
            found.append(rel)
    return [blog_dir / rel for rel in sorted(found)]


# ---------------------------------------------------------------------------- index file
@dataclass
class IndexSelection:
    posts: list[Path]
    missing: list[str]  # linked posts not on disk (relative paths)
    titles: dict[str, str]  # relative path -> link text
    outside: list[str] = field(default_factory=list)  # links leaving the blog folder, rejected


def select_from_index(
    blog_dir: Path, index_file: str, marker: str | None = None, keyword: str | None = None
) -> IndexSelection:
    """Posts linked from an index file such as a README listing every article.

    Lines after the first one containing `marker` (all lines when None) that hold a markdown
    link to a ``.md`` file are entries; with `keyword`, only lines containing it (any case).
    Links resolve relative to the index file, like on GitHub. Order kept, duplicates dropped.
    """
    blog_dir = Path(blog_dir)
    root_abs = os.path.abspath(blog_dir)
    root_real = blog_dir.resolve()
    index_path = blog_dir / index_file
    base = os.path.dirname(os.path.abspath(index_path))
    lines = index_path.read_text(encoding="utf-8-sig", errors="replace").splitlines()
    start = 0
    if marker:
        marker = marker.strip()
        # A line that is the marker wins over an earlier one that merely mentions it.
        hit = next((i for i, line in enumerate(lines) if line.strip() == marker), None)
        if hit is None:
            hit = next((i for i, line in enumerate(lines) if marker in line), None)
        if hit is None:
            raise ValueError(f"index file {index_path}: marker {marker!r} not found")
        start = hit + 1
    needle = keyword.casefold() if keyword else None
    sel = IndexSelection(posts=[], missing=[], titles={})
    seen: set[str] = set()
    for line in lines[start:]:
        if needle and needle not in line.casefold():
            continue
        for m in _LINK.finditer(line):
            target = m.group(2).strip("<>").split("#", 1)[0].split("?", 1)[0]
            if _SCHEME.match(target) or not target.lower().endswith(".md"):
                continue  # web links and non-posts
            target = unquote(target)
            absolute = os.path.normpath(
                os.path.join(root_abs, target.lstrip("/"))
                if target.startswith("/")
                else os.path.join(base, target)
            )
            rel = Path(os.path.relpath(absolute, root_abs)).as_posix()
            if rel in seen:
                continue
            seen.add(rel)
            path = blog_dir / rel
            if rel == ".." or rel.startswith("../") or not path.resolve().is_relative_to(root_real):
                log.warning("index %s links outside the blog folder: %s; skipped", index_file, target)
                sel.outside.append(target)
            elif not path.is_file():
                sel.missing.append(rel)
            else:
                sel.posts.append(path)
                sel.titles[rel] = " ".join(m.group(1).split())
    return sel


# ---------------------------------------------------------------------------- reading
@dataclass
class Article:
    article_id: str
    path: str  # relative to the blog folder, POSIX
    title: str
    text: str  # cleaned markdown
    sha256: str  # of the raw file bytes
    date: str | None = None
    tags: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    whitespace_saved: int = 0  # chars of whitespace cleaning removed
    lang: str = "default"  # prompt language of the whole article (format.prompts key)
    removed: list[Removed] = field(default_factory=list)  # boilerplate taken out of it


@dataclass
class Reject:
    path: str
    reason: str  # short, for people
    kind: str = "error"  # stable key for counting: empty, binary, not-utf8, duplicate, ...


def _rel(path: Path, blog_dir: Path) -> str:
    try:
        return Path(path).relative_to(blog_dir).as_posix()
    except ValueError:
        return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(blog_dir))).as_posix()


def article_id_for(path: Path, blog_dir: Path) -> str:
    """Relative POSIX path without ``.md``, e.g. ``202412/20241210_01``: the split hash key.
    Unicode NFC, so a clone on macOS (NFD file names) hashes a post into the same split."""
    rel = unicodedata.normalize("NFC", _rel(Path(path), Path(blog_dir)))
    stem, ext = posixpath.splitext(rel)
    return stem if ext.lower() in (".md", ".markdown") else rel


def _decode(data: bytes) -> tuple[str | None, str, str]:
    """(text, reason, kind); text is None when the bytes are not a readable post."""
    offset = 0
    if data.startswith(codecs.BOM_UTF8):
        data, offset = data[3:], 3
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return None, "not UTF-8 (UTF-16 byte order mark)", "not-utf8"
    if not data.strip():
        return None, "empty or whitespace only", "empty"
    if b"\x00" in data:
        return None, "binary (contains NUL bytes)", "binary"
    control = len(data.translate(None, _NOT_CONTROL))
    if control > _MAX_CONTROL_RATIO * len(data):
        return None, f"binary ({control} control bytes in {len(data)})", "binary"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = data[exc.start]
        return None, f"not UTF-8 (byte 0x{bad:02x} at offset {exc.start + offset})", "not-utf8"
    return text.replace("\r\n", "\n").replace("\r", "\n"), "", ""


def read_post(path: Path, blog_dir: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> Article | Reject:
    """Read and clean one post, or say why not. The size is checked before reading."""
    path, blog_dir = Path(path), Path(blog_dir)
    rel = _rel(path, blog_dir)
    try:
        if not path.resolve().is_relative_to(blog_dir.resolve()):
            return Reject(rel, "outside the blog folder (symlink)", "outside-blog")
        size = path.stat().st_size
        if size > max_bytes:
            return Reject(rel, f"too large ({size:,} bytes > {max_bytes:,})", "too-large")
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        return Reject(rel, f"unreadable ({exc.strerror or exc})", "unreadable")
    if len(data) > max_bytes:  # grew since stat
        return Reject(rel, f"too large (> {max_bytes:,} bytes)", "too-large")
    text, reason, kind = _decode(data)
    if text is None:
        return Reject(rel, reason, kind)
    clean = clean_markdown(text, fallback_title=path.stem)
    for note in clean.notes:
        log.warning("%s: %s", rel, note)
    if not clean.text.strip():
        return Reject(rel, "no text left after cleaning", "no-text")
    return Article(
        article_id=article_id_for(path, blog_dir),
        path=rel,
        title=clean.title,
        text=clean.text,
        sha256=hashlib.sha256(data).hexdigest(),
        date=meta_date(clean.meta),
        tags=meta_tags(clean.meta),
        notes=clean.notes,
        whitespace_saved=clean.whitespace_saved,
    )


def _near_key(text: str) -> str:
    """Text with case, whitespace and punctuation gone: catches reformatted copies."""
    return _NOT_WORD.sub("", text.casefold())


def _progress(items: list, enabled: bool) -> Iterable:
    if enabled:
        try:
            from tqdm import tqdm
        except ImportError:
            return items
        return tqdm(items, desc="reading posts", unit="post", mininterval=1.0)
    return items


def load_articles(
    paths: Iterable[Path],
    blog_dir: Path,
    max_bytes: int = DEFAULT_MAX_BYTES,
    boilerplate_min_fraction: float | None = 0.5,
    boilerplate_min_posts: int = 3,
    near_duplicates: bool = True,
    progress: bool = False,
) -> tuple[list[Article], list[Reject]]:
    """Read all posts, strip boilerplate shared across them, drop duplicates.

    Articles come sorted by article id; of identical texts the first id is kept and the
    others are rejected as "duplicate of <id>". A bad post is rejected alone: it never takes
    a good one with it. `boilerplate_min_fraction` None or 0 turns boilerplate removal off;
    `boilerplate_min_posts` is the count of posts a repeated head/tail block needs (see
    :mod:`blogtune.data.boilerplate`). Each article gets its prompt language (`lang`).
    """
    blog_dir = Path(blog_dir)
    articles: list[Article] = []
    rejects: list[Reject] = []
    for path in _progress(list(paths), progress):
        try:
            result = read_post(path, blog_dir, max_bytes)
        except Exception as exc:  # a bug on one odd post must not sink the whole blog
            log.exception("failed to read %s", path)
            result = Reject(_rel(Path(path), blog_dir), f"error ({type(exc).__name__}: {exc})", "error")
        (rejects if isinstance(result, Reject) else articles).append(result)

    if boilerplate_min_fraction and articles:
        texts, removed = remove_boilerplate(
            [a.text for a in articles], boilerplate_min_fraction, boilerplate_min_posts
        )
        kept = []
        for a, text, gone in zip(articles, texts, removed, strict=True):
            a.text, a.removed = text, gone
            if a.text.strip():
                kept.append(a)
            else:
                rejects.append(Reject(a.path, "no text left after removing boilerplate", "boilerplate-only"))
        n_posts = sum(bool(gone) for gone in removed)
        if n_posts:
            log.info("boilerplate: removed from %d of %d posts", n_posts, len(articles))
        articles = kept
    for a in articles:
        a.lang = article_language(a.title, a.text)

    articles.sort(key=lambda a: a.article_id)
    unique: list[Article] = []
    by_id: set[str] = set()
    by_hash: dict[str, str] = {}
    by_near: dict[str, str] = {}
    for a in articles:
        digest = hashlib.sha256(a.text.encode()).hexdigest()
        near = _near_key(a.text) if near_duplicates else None
        if a.article_id in by_id:
            rejects.append(
                Reject(a.path, f"same article id as another post ({a.article_id})", "duplicate-id")
            )
        elif digest in by_hash:
            rejects.append(Reject(a.path, f"duplicate of {by_hash[digest]}", "duplicate"))
        elif near is not None and near in by_near:
            rejects.append(Reject(a.path, f"near-duplicate of {by_near[near]}", "near-duplicate"))
        else:
            by_id.add(a.article_id)
            by_hash[digest] = a.article_id
            if near is not None:
                by_near[near] = a.article_id
            unique.append(a)
    rejects.sort(key=lambda r: r.path)
    return unique, rejects
