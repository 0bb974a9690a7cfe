"""Benchmark: teach-stage throughput against a real local llama.cpp server, concurrency N vs 1.

Serves the embedded model (an f16 GGUF blogtune's exporter writes from it) with
`python -m llama_cpp.server`, then teaches the same train-split posts twice without a cache:
once with 1 request in flight, once with N. Prints output tokens/s and posts/min of each and
their ratio. (llama-cpp-python's server decodes one request at a time; servers with parallel
slots — vLLM, llama.cpp's own `llama-server -np N`, Ollama with OLLAMA_NUM_PARALLEL — gain more.)

    python bench/teach_throughput.py [--posts 4] [--concurrency 4] [--max-tokens 64] [--repeats 2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from blogtune.io_utils import read_jsonl  # noqa: E402
from blogtune.teach.sections import group_posts  # noqa: E402
from blogtune.teach.stage import TeachSettings, teach_posts  # noqa: E402
from blogtune.teach.teachers import OpenAITeacher  # noqa: E402
from blogtune.testing_servers import LlamaServer, build_f16_gguf  # noqa: E402


def run(url: str, chunks: list[dict], concurrency: int, max_tokens: int, settings: TeachSettings) -> dict:
    teacher = OpenAITeacher(url, "blogtune", concurrency=concurrency, max_tokens=max_tokens, temperature=0.0,
                            timeout_s=600)
    t0 = time.perf_counter()
    stats = teach_posts(chunks, settings, teacher, cache=None)["stats"]
    sec = time.perf_counter() - t0
    return {"concurrency": concurrency, "seconds": sec, "requests": stats["requests"],
            "output_tokens": stats["output_tokens"], "tokens_per_s": stats["output_tokens"] / sec,
            "posts_per_min": stats["posts"] * 60 / sec}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=Path, default=REPO / "results/data/split/train.jsonl",
                    help="split chunks (run `snakemake --cores 1 split` first)")
    ap.add_argument("--posts", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2, help="pairs of runs, order alternated")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="server threads")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/blogtune-bench-teach"))
    a = ap.parse_args()
    posts = group_posts(read_jsonl(a.train))
    chunks = [c for aid in sorted(posts)[: a.posts] for c in posts[aid]]
    settings = TeachSettings(questions_per_section=2, rewrites=("summary",), max_section_chars=1500)
    a.workdir.mkdir(parents=True, exist_ok=True)
    gguf = build_f16_gguf(a.workdir)
    with LlamaServer(gguf, threads=a.threads, log=a.workdir / "server.log") as server:
        run(server.url, chunks[:1], 1, 8, TeachSettings(questions_per_section=1, rewrites=()))  # warm-up
        # alternate 1, N, N, 1, ...: a machine shared with other work drifts; pairs cancel that out
        results = []
        for k in range(a.repeats):
            for c in ((1, a.concurrency) if k % 2 == 0 else (a.concurrency, 1)):
                results.append(run(server.url, chunks, c, a.max_tokens, settings))
                r = results[-1]
                print(f"concurrency {c:>3}: {r['requests']} requests, {r['output_tokens']} output tokens in "
                      f"{r['seconds']:.1f} s -> {r['tokens_per_s']:.1f} tok/s, {r['posts_per_min']:.2f} posts/min")

    def total(c: int) -> dict:
        rs = [r for r in results if r["concurrency"] == c]
        sec = sum(r["seconds"] for r in rs)
        return {"tokens_per_s": sum(r["output_tokens"] for r in rs) / sec, "posts_per_min": len(rs) * a.posts * 60 / sec}

    one, many = total(1), total(a.concurrency)
    print(f"ratio (concurrency {a.concurrency} / 1): tokens/s x{many['tokens_per_s'] / one['tokens_per_s']:.2f}, "
          f"posts/min x{many['posts_per_min'] / one['posts_per_min']:.2f}")


if __name__ == "__main__":
    main()
