"""Rule `chunk`: blog posts -> chunks.jsonl, articles.tsv, rejects.tsv, boilerplate.tsv.

Run by Snakemake (`script:`), or by hand: `python scripts/chunk.py` runs the job Snakemake would
(inputs, outputs and params from config.yaml, via blogtune.standalone).
"""

# No `from __future__` here: Snakemake prepends its preamble to script files.
import logging
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from blogtune.data.boilerplate import removal_table
from blogtune.data.chunking import chunk_article
from blogtune.data.posts import DEFAULT_MAX_BYTES, Reject, load_articles
from blogtune.io_utils import atomic_open, atomic_write_jsonl
from blogtune.logs import setup_logging, snakemake_log

log = logging.getLogger("blogtune.chunk")

ARTICLE_COLUMNS = ["article_id", "path", "title", "date", "sha256", "chars", "chunks", "lang", "whitespace_saved"]
BOILERPLATE_COLUMNS = ["kind", "posts", "lines", "text"]  # what was removed, from how many posts
REJECT_COLUMNS = ["path", "reason"]


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


def main(snakemake) -> None:
    setup_logging(snakemake_log(snakemake))
    p = snakemake.params
    run(
        posts=list(snakemake.input.posts),
        blog_dir=snakemake.input.blog_dir,
        chunks_out=snakemake.output.chunks,
        articles_out=snakemake.output.articles,
        rejects_out=snakemake.output.rejects,
        max_chars=int(p.max_chars),
        boilerplate_min_fraction=p.boilerplate_min_fraction,
        max_post_bytes=int(p.max_post_bytes),
        index_missing=list(p.index_missing or []),
        boilerplate_out=snakemake.output.boilerplate,
        boilerplate_min_posts=int(p.boilerplate_min_posts),
    )


if __name__ == "__main__":
    if "snakemake" not in globals():  # run by hand: the same job Snakemake would run, from config.yaml
        from blogtune.standalone import mock_snakemake

        snakemake = mock_snakemake("chunk")
    main(snakemake)  # noqa: F821
