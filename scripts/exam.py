"""Rule exam: the exam items on the base model and on base + adapters (MLX).

Standalone: python scripts/exam.py MLX_BASE ADAPTERS ITEMS TRAIN_JSONL --out-dir /tmp/exam
"""

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blogtune.io_utils import atomic_write_json, atomic_write_jsonl, read_jsonl  # noqa: E402
from blogtune.logs import setup_logging, snakemake_log  # noqa: E402

log = logging.getLogger("blogtune.exam")


def main(model, adapters, items_path, train_path, metrics_out, rows_out, settings: dict, log_file=None) -> None:
    setup_logging(log_file)
    from blogtune.blas import use_fast_blas

    use_fast_blas()
    from blogtune.exam.items import leaked_questions, sample_texts
    from blogtune.exam.run import ExamSettings, run_exam

    items = list(read_jsonl(items_path))
    texts = [t for s in read_jsonl(train_path) for t in sample_texts(s)]
    leaked = set(leaked_questions(items, texts))
    if leaked:  # an item whose question was trained on measures nothing: drop it, say so
        log.warning("%d item(s) have a question that appears in %s; dropped", len(leaked), train_path)
        items = [it for it in items if it["item_id"] not in leaked]
    metrics, rows = run_exam(model, adapters, items, ExamSettings(**settings))
    metrics["dropped_leaked"] = len(leaked)
    atomic_write_json(metrics_out, metrics)
    atomic_write_jsonl(rows_out, rows)
    log.info("exam done in %.1f s -> %s", metrics["seconds"], metrics_out)


if "snakemake" in globals():
    smk = snakemake  # noqa: F821
    p = smk.params
    main(
        smk.input.model,
        smk.input.adapters,
        smk.input.exam_items,
        smk.input.train,
        smk.output.metrics,
        smk.output.rows,
        dict(max_tokens=p.max_tokens, generate_items=p.generate_items, batch_size=p.batch_size, seed=p.seed),
        snakemake_log(smk),
    )
elif __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    for name in ("model", "adapters", "items", "train"):
        ap.add_argument(name)
    ap.add_argument("--out-dir", type=Path, default=Path("exam"))
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--generate-items", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    a = ap.parse_args()
    main(
        a.model, a.adapters, a.items, a.train, a.out_dir / "exam_metrics.json", a.out_dir / "exam_items.jsonl",
        dict(max_tokens=a.max_tokens, generate_items=a.generate_items, batch_size=a.batch_size),
    )
