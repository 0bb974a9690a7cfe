"""Rule exam: the exam items on the base model and on base + adapters (MLX).

Run by Snakemake (`script:`), or by hand: `python scripts/exam.py` runs the job Snakemake would
(inputs, outputs and params from config.yaml, via blogtune.standalone).
"""

import logging
from pathlib import Path

from blogtune.io_utils import atomic_write_json, atomic_write_jsonl, read_jsonl
from blogtune.logs import setup_logging, snakemake_log

log = logging.getLogger("blogtune.exam")


def run(model, adapters, items_path, train_path, metrics_out, rows_out, settings: dict, log_file=None) -> None:
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
    from blogtune.evaluate.base_cache import BaseCache

    # The base half is kept beside the outputs: a new LoRA setting reruns only the adapters' half.
    cache = BaseCache(Path(metrics_out).parent / "base_cache")
    metrics, rows = run_exam(model, adapters, items, ExamSettings(**settings), base_cache=cache)
    metrics["dropped_leaked"] = len(leaked)
    atomic_write_json(metrics_out, metrics)
    atomic_write_jsonl(rows_out, rows)
    log.info("exam done in %.1f s -> %s", metrics["seconds"], metrics_out)


def main(snakemake) -> None:
    p = snakemake.params
    run(
        snakemake.input.model,
        snakemake.input.adapters,
        snakemake.input.exam_items,
        snakemake.input.train,
        snakemake.output.metrics,
        snakemake.output.rows,
        dict(max_tokens=p.max_tokens, answer_room=p.answer_room, generate_items=p.generate_items,
             heldout_items=p.heldout_items, batch_size=p.batch_size, seed=p.seed,
             max_reference_tokens=p.max_reference_tokens),
        snakemake_log(snakemake),
    )


if __name__ == "__main__":
    if "snakemake" not in globals():  # run by hand: the same job Snakemake would run, from config.yaml
        from blogtune.standalone import mock_snakemake

        snakemake = mock_snakemake("exam")
    main(snakemake)  # noqa: F821
