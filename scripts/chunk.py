"""Rule `chunk`: blog posts -> chunks.jsonl, articles.tsv, rejects.tsv, boilerplate.tsv.

Run by Snakemake (`script:`), or by hand for debugging:
    python scripts/chunk.py --blog-dir sample_blog --out-dir /tmp/chunk
"""

# No `from __future__` here: Snakemake prepends its preamble to script files.
import argparse
import logging
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Snakemake sets __file__ to this file

import pandas as pd  # noqa: E402

from blogtune.boilerplate import removal_table  # noqa: E402
from blogtune.chunking import chunk_article  # noqa: E402
from blogtune.io_utils import atomic_open, atomic_write_jsonl  # noqa: E402
from blogtune.posts import DEFAULT_MAX_BYTES, Reject, discover_posts, load_articles  # noqa: E402

log = logging.getLogger("blogtune.chunk")

ARTICLE_COLUMNS = ["article_id", "path", "title", "date", "sha256", "chars", "chunks", "lang", "whitespace_saved"]
BOILERPLATE_COLUMNS = ["kind", "posts", "lines", "text"]  # what was removed, from how many posts
REJECT_COLUMNS = ["path", "reason"]


def setup_logging(log_file: str | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w", encoding="utf-8"))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )


def write_tsv(path: str | Path, table: pd.DataFrame) -> None:
    with atomic_open(path) as fh:
        table.to_csv(fh, sep="\t", index=False)


def run(
    posts: Sequence[str | Path],
    blog_dir: str | Path,
    chunks_out: str | Path,
    articles_out: str | Path,
    rejects_out: str | Path,
    max_chars: int,
    boilerplate_min_fraction: float | None = 0.5,
    max_post_bytes: int = DEFAULT_MAX_BYTES,
    index_missing: Sequence[str] = (),
    boilerplate_out: str | Path | None = None,
    boilerplate_min_posts: int = 3,
) -> None:
    start = time.perf_counter()
    posts = list(posts)
    articles, rejects = load_articles(
        posts,
        Path(blog_dir),
        max_bytes=max_post_bytes,
        boilerplate_min_fraction=boilerplate_min_fraction,
        boilerplate_min_posts=boilerplate_min_posts,
        progress=len(posts) > 200,
    )
    rejects += [Reject(m, "listed in index but missing", "index-missing") for m in index_missing]

    chunks = []
    rows = []
    for a in articles:  # sorted by article id, so chunks come sorted by (article_id, part)
        pieces = chunk_article(a.article_id, a.title, a.text, max_chars, lang=a.lang)
        chunks.extend(pieces)
        rows.append(
            [a.article_id, a.path, a.title, a.date or "", a.sha256, len(a.text), len(pieces), a.lang, a.whitespace_saved]
        )

    atomic_write_jsonl(chunks_out, (c.to_dict() for c in chunks))
    write_tsv(articles_out, pd.DataFrame(rows, columns=ARTICLE_COLUMNS))
    write_tsv(rejects_out, pd.DataFrame([[r.path, r.reason] for r in rejects], columns=REJECT_COLUMNS))
    removed = removal_table(a.removed for a in articles)
    if boilerplate_out:
        # One row per block: its lines joined by a literal "\n", so the TSV stays one line a row.
        rows = [(kind, n, lines, text.replace("\\", "\\\\").replace("\n", "\\n")) for kind, n, lines, text in removed]
        write_tsv(boilerplate_out, pd.DataFrame(rows, columns=BOILERPLATE_COLUMNS))
    for kind, n, lines, text in removed[:10]:
        log.info("boilerplate %s (%d line(s)) removed from %d post(s): %s", kind, lines, n, text.replace("\n", " | ")[:120])

    by_kind = Counter(r.kind for r in rejects)
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(by_kind.items()))
    log.info(
        "%d posts read: %d articles, %d rejected%s; %d chunks, %d characters (max_chars %d; %d chars of "
        "whitespace and %d fence lines added to cut code blocks) in %.1f s",
        len(posts),
        len(articles),
        len(rejects),
        f" ({kinds})" if kinds else "",
        len(chunks),
        sum(len(c.text) for c in chunks),
        max_chars,
        sum(a.whitespace_saved for a in articles),
        sum(bool(c.added_head) + bool(c.added_tail) for c in chunks),
        time.perf_counter() - start,
    )
    if len(articles) < 2:
        log.warning("only %d usable article(s); see %s", len(articles), rejects_out)


def main_from_snakemake(smk) -> None:
    setup_logging(smk.log[0] if smk.log else None)
    p = smk.params
    run(
        posts=list(smk.input.posts),
        blog_dir=p.blog_dir,
        chunks_out=smk.output.chunks,
        articles_out=smk.output.articles,
        rejects_out=smk.output.rejects,
        max_chars=int(p.max_chars),
        boilerplate_min_fraction=p.boilerplate_min_fraction,
        max_post_bytes=int(p.max_post_bytes),
        index_missing=list(getattr(p, "index_missing", None) or []),
        boilerplate_out=smk.output.boilerplate,
        boilerplate_min_posts=int(p.boilerplate_min_posts),
    )


def cli(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blog-dir", required=True, type=Path)
    ap.add_argument("posts", nargs="*", type=Path, help="post files (default: all .md files in --blog-dir)")
    ap.add_argument("--pattern", default="**/*.md")
    ap.add_argument("--exclude", nargs="*", default=["README.md"])
    ap.add_argument(
        "--out-dir",
        type=Path,
        default=Path("results/data"),
        help="writes chunks.jsonl, articles.tsv, rejects.tsv, boilerplate.tsv here",
    )
    ap.add_argument("--max-chars", type=int, default=1024)
    ap.add_argument("--boilerplate-min-fraction", type=float, default=0.5)
    ap.add_argument("--boilerplate-min-posts", type=int, default=3)
    ap.add_argument("--max-post-bytes", type=int, default=DEFAULT_MAX_BYTES)
    ap.add_argument("--log", default=None)
    args = ap.parse_args(argv)
    setup_logging(args.log)
    posts = args.posts or discover_posts(args.blog_dir, args.pattern, args.exclude)
    run(
        posts,
        args.blog_dir,
        args.out_dir / "chunks.jsonl",
        args.out_dir / "articles.tsv",
        args.out_dir / "rejects.tsv",
        args.max_chars,
        args.boilerplate_min_fraction,
        args.max_post_bytes,
        boilerplate_out=args.out_dir / "boilerplate.tsv",
        boilerplate_min_posts=args.boilerplate_min_posts,
    )


if __name__ == "__main__":
    if "snakemake" in globals():
        main_from_snakemake(snakemake)  # noqa: F821
    else:
        cli()
