"""Data preparation at real-blog scale, compared with the one-job-per-post design.

    .venv/bin/python bench/data_prep.py [--posts 5000] [--naive-posts 300]

On a generated blog of --posts posts it times, through the real workflow:
  1. chunk + split from scratch          (budget: < 60 s for 5,000 posts)
  2. chunk + split after one new post
  3. a no-op `snakemake -n`              (budget: < 5 s)
and compares (1) with the peer design most Snakemake workflows use — one job per post — by
running such a workflow on --naive-posts posts and extrapolating its jobs/s to --posts.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from make_blog import make_blog  # noqa: E402

from blogtune.testing import dry_run_reasons, run_snakemake, write_config  # noqa: E402

NAIVE_SNAKEFILE = textwrap.dedent(
    """
    from pathlib import Path
    POSTS = sorted(str(p.relative_to(config["blog"])).removesuffix(".md")
                   for p in Path(config["blog"]).rglob("*.md") if p.name != "README.md")

    rule all:
        input: "chunks.jsonl"

    rule chunk_one:  # the usual design: one job per post
        input: config["blog"] + "/{post}.md"
        output: "per_post/{post}.jsonl"
        script: "chunk_one.py"

    rule gather:
        input: expand("per_post/{post}.jsonl", post=POSTS)
        output: "chunks.jsonl"
        shell: "cat {input} > {output}"
    """
)
NAIVE_SCRIPT = textwrap.dedent(
    """
    import json
    from blogtune.data.chunking import chunk_article
    text = open(snakemake.input[0], encoding="utf-8").read()
    with open(snakemake.output[0], "w", encoding="utf-8") as fh:
        for c in chunk_article(snakemake.wildcards.post, snakemake.wildcards.post, text, 1024):
            fh.write(json.dumps(c.to_dict(), ensure_ascii=False) + "\\n")
    """
)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_workflow(root: Path, posts: int) -> dict[str, float]:
    blog, work = root / "blog", root / "work"
    make_blog(blog, posts, seed=0)
    write_config(work, {"blog": {"dir": str(blog)}})
    out = {"from_scratch_s": timed(lambda: run_snakemake(work, "split"))}
    make_blog(blog, 1, seed=1, start_index=posts)
    out["one_new_post_s"] = timed(lambda: run_snakemake(work, "split"))
    out["noop_dry_run_s"] = timed(lambda: dry_run_reasons(work, "split"))
    assert dry_run_reasons(work, "split") == {}, "a no-op run must have nothing to do"
    return out


def bench_naive(root: Path, posts: int) -> float:
    blog, work = root / "naive_blog", root / "naive"
    make_blog(blog, posts, seed=0)
    work.mkdir(parents=True)
    (work / "Snakefile").write_text(NAIVE_SNAKEFILE, encoding="utf-8")
    (work / "chunk_one.py").write_text(NAIVE_SCRIPT, encoding="utf-8")
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "-d", str(work), "-s", str(work / "Snakefile"),
           "--config", f"blog={blog}", "--quiet"]
    return timed(lambda: subprocess.run(cmd, check=True, env=env, capture_output=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--posts", type=int, default=5000)
    ap.add_argument("--naive-posts", type=int, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ours = bench_workflow(root, args.posts)
        naive_s = bench_naive(root, args.naive_posts)
    naive_full = naive_s / args.naive_posts * args.posts
    print(f"\nData preparation on a generated {args.posts}-post blog (chunk + split)")
    print(f"{'measurement':<40}{'blogtune':>12}{'compared with':>40}")
    peer = f"one job per post: ~{naive_full:.0f}s (x{naive_full / ours['from_scratch_s']:.0f})"
    print(f"{'from scratch':<40}{ours['from_scratch_s']:>11.1f}s{peer:>40}")
    print(f"{'after one new post':<40}{ours['one_new_post_s']:>11.1f}s{'budget 60 s':>40}")
    print(f"{'no-op snakemake -n':<40}{ours['noop_dry_run_s']:>11.1f}s{'budget 5 s':>40}")
    print(f"(one-job-per-post measured on {args.naive_posts} posts: {naive_s:.1f}s, "
          f"{args.naive_posts / naive_s:.1f} posts/s, extrapolated linearly)")


if __name__ == "__main__":
    main()
