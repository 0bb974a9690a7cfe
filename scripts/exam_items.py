"""Rule exam_items: split chunks (+ held-out teacher questions, when present) -> exam items.

Run by Snakemake (`script:`), or by hand: `python scripts/exam_items.py` runs the job Snakemake would
(inputs, outputs and params from config.yaml, via blogtune.standalone).
"""

import logging
from collections import Counter
from pathlib import Path

from blogtune.exam.items import build_cloze_items, qa_items
from blogtune.io_utils import atomic_write_jsonl, read_jsonl
from blogtune.logs import setup_logging, snakemake_log

log = logging.getLogger("blogtune.exam_items")


def run(split_files: dict, heldout, out, seed: int, max_items: int, max_per_article: int, log_file=None) -> None:
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


def main(snakemake) -> None:
    p = snakemake.params
    run(
        {s: snakemake.input[s] for s in ("train", "valid", "test")},
        snakemake.input.heldout,
        snakemake.output.exam_items,
        p.seed,
        p.max_items,
        p.max_per_article,
        snakemake_log(snakemake),
    )


if __name__ == "__main__":
    if "snakemake" not in globals():  # run by hand: the same job Snakemake would run, from config.yaml
        from blogtune.standalone import mock_snakemake

        snakemake = mock_snakemake("exam_items")
    main(snakemake)  # noqa: F821
