"""Rule evaluate: base vs fine-tuned loss/perplexity per split and article, plus generations.

Run by Snakemake (`script:`), or by hand: `python scripts/evaluate.py` runs the job Snakemake would
(inputs, outputs and params from config.yaml, via blogtune.standalone).
mask_prompt and max_seq_length default to what the adapters' adapter_config.json recorded.
"""

# No `from __future__` here: Snakemake prepends its preamble to script files.
import logging
from pathlib import Path

import pandas as pd

from blogtune.io_utils import atomic_open, atomic_write_json, atomic_write_jsonl
from blogtune.logs import setup_logging, snakemake_log

log = logging.getLogger("blogtune.evaluate")

PER_ARTICLE_COLUMNS = [
    "split",
    "article_id",
    "title",
    "samples",
    "tokens",
    "base_loss",
    "finetuned_loss",
    "base_perplexity",
    "finetuned_perplexity",
    "loss_change",
]


def _fast_blas() -> None:
    """OpenBLAS for MLX's CPU matmuls, loaded before mlx (no-op where blogtune.blas is absent)."""
    try:
        from blogtune.blas import use_fast_blas
    except ImportError:
        return
    use_fast_blas()


def run(
    model_dir,
    adapters,
    split_files,
    metrics_out,
    per_article_out,
    generations_out,
    settings: dict,
    log_file=None,
) -> None:
    setup_logging(log_file)
    _fast_blas()
    from blogtune.evaluate import EvalSettings, evaluate_model_pair, read_training_settings

    trained = read_training_settings(adapters)
    settings = {k: v for k, v in settings.items() if v is not None}
    for key in ("mask_prompt", "max_seq_length"):  # unset: as the adapters were trained
        settings.setdefault(key, trained[key])
    eval_settings = EvalSettings(**settings)
    log.info(
        "evaluating %s (+ adapters %s) on %s; mask_prompt=%s max_seq_length=%d batch_size=%d",
        model_dir,
        adapters,
        ", ".join(f"{k}={v}" for k, v in split_files.items()),
        eval_settings.mask_prompt,
        eval_settings.max_seq_length,
        eval_settings.batch_size,
    )
    from blogtune.evaluate.base_cache import BaseCache

    # The base pass is kept beside the outputs: a new LoRA setting reruns only the adapters' pass.
    cache = BaseCache(Path(metrics_out).parent / "base_cache")
    result = evaluate_model_pair(model_dir, adapters, split_files, eval_settings, base_cache=cache)

    atomic_write_json(metrics_out, result.metrics)
    with atomic_open(per_article_out) as fh:
        pd.DataFrame(result.per_article, columns=PER_ARTICLE_COLUMNS).to_csv(fh, sep="\t", index=False)
    atomic_write_jsonl(generations_out, result.generations)
    for split, m in result.metrics["splits"].items():
        log.info(
            "%s: loss %s -> %s, perplexity %s -> %s (%d samples, %d tokens)",
            split,
            _f(m["base"]["loss"]),
            _f(m["finetuned"]["loss"]),
            _f(m["base"]["perplexity"]),
            _f(m["finetuned"]["perplexity"]),
            m["samples"],
            m["tokens"],
        )
    log.info(
        "done in %.1f s: %s, %s, %s", result.metrics["seconds"], metrics_out, per_article_out, generations_out
    )


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def main(snakemake) -> None:
    p = snakemake.params
    run(
        snakemake.input.model,
        snakemake.input.adapters,
        {s: snakemake.input[s] for s in ("train", "valid", "test")},
        snakemake.output.metrics,
        snakemake.output.per_article,
        snakemake.output.generations,
        dict(
            mask_prompt=p.mask_prompt,
            max_seq_length=p.max_seq_length,
            batch_size=p.batch_size,
            prompts=list(p.prompts or []),
            max_tokens=p.max_tokens,
            temperature=p.temperature,
            top_p=p.top_p,
            seed=p.seed,
            heldout_prompts=p.heldout_prompts,
            train_sample_articles=p.train_sample_articles,
        ),
        snakemake_log(snakemake),
    )


if __name__ == "__main__":
    if "snakemake" not in globals():  # run by hand: the same job Snakemake would run, from config.yaml
        from blogtune.standalone import mock_snakemake

        snakemake = mock_snakemake("evaluate")
    main(snakemake)  # noqa: F821
