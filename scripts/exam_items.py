"""Rule exam_items: split chunks (+ held-out teacher questions, when present) -> exam items.

Standalone: python scripts/exam_items.py results/data/split --out /tmp/items.jsonl [--heldout F]
"""

import argparse
import logging
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blogtune.exam.items import build_cloze_items, qa_items  # noqa: E402
from blogtune.io_utils import atomic_write_jsonl, read_jsonl  # noqa: E402
from blogtune.logs import setup_logging, snakemake_log  # noqa: E402

log = logging.getLogger("blogtune.exam_items")


def main(split_files: dict, heldout, out, seed: int, max_items: int, max_per_article: int, log_file=None) -> None:
    setup_logging(log_file)
    chunks = {s: list(read_jsonl(p)) for s, p in split_files.items()}
    items = build_cloze_items(chunks, seed=seed, max_items=max_items, max_per_article=max_per_article)
    if heldout and Path(heldout).is_file():
        split_of = {c["article_id"]: s for s, rows in chunks.items() for c in rows}
        items += qa_items(read_jsonl(heldout), split_of)
    else:
        log.info("no held-out teacher questions (%s): cloze items only", heldout or "teach stage not run")
    n = atomic_write_jsonl(out, (it.to_dict() for it in items))
    log.info("%d items -> %s: %s", n, out, dict(Counter(f"{it.split}/{it.kind}" for it in items)))


if "snakemake" in globals():
    smk = snakemake  # noqa: F821
    main(
        {s: smk.input[s] for s in ("train", "valid", "test")},
        next(iter(smk.input.get("heldout") or []), None),
        smk.output.exam_items,
        smk.params.seed,
        smk.params.max_items,
        smk.params.max_per_article,
        snakemake_log(smk),
    )
elif __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("split_dir", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--heldout", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-items", type=int, default=160)
    ap.add_argument("--max-per-article", type=int, default=8)
    a = ap.parse_args()
    main({s: a.split_dir / f"{s}.jsonl" for s in ("train", "valid", "test")}, a.heldout, a.out, a.seed, a.max_items, a.max_per_article)
