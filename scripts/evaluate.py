"""Rule evaluate: base vs fine-tuned loss/perplexity per split and article, plus generations.

Run by Snakemake (`script:`), or by hand for debugging:
    python scripts/evaluate.py results/<model>/mlx_base results/<model>/train/adapters \\
        results/<model>/data --out-dir /tmp/eval --prompt "What is this blog about?"
mask_prompt and max_seq_length default to what the adapters' adapter_config.json recorded.
"""

# No `from __future__` here: Snakemake prepends its preamble to script files.
import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Snakemake sets __file__ to this file

import pandas as pd  # noqa: E402

from blogtune.io_utils import atomic_open, atomic_write_json, atomic_write_jsonl  # noqa: E402
from blogtune.logs import setup_logging, snakemake_log  # noqa: E402

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


def main(
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
    from blogtune.evaluate.losses import EvalSettings, evaluate_model_pair, read_training_settings

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
    result = evaluate_model_pair(model_dir, adapters, split_files, eval_settings)

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


if "snakemake" in globals():
    smk = snakemake  # noqa: F821
    p = smk.params
    main(
        smk.input.model,
        smk.input.adapters,
        {s: smk.input[s] for s in ("train", "valid", "test")},
        smk.output.metrics,
        smk.output.per_article,
        smk.output.generations,
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
        snakemake_log(smk),
    )
elif __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", help="MLX base model folder")
    ap.add_argument("adapters", help="LoRA adapters folder (adapters.safetensors + adapter_config.json)")
    ap.add_argument("data_dir", type=Path, help="folder with formatted train/valid/test.jsonl")
    ap.add_argument("--out-dir", type=Path, default=Path("eval"))
    ap.add_argument("--prompt", action="append", default=[], help="a generation prompt (repeatable)")
    ap.add_argument("--mask-prompt", default=None, type=lambda s: s.lower() in ("1", "true", "yes"))
    ap.add_argument("--max-seq-length", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heldout-prompts", type=int, default=4)
    ap.add_argument("--train-sample-articles", type=int, default=5)
    ap.add_argument("--log", default=None)
    a = ap.parse_args()
    main(
        a.model_dir,
        a.adapters,
        {s: a.data_dir / f"{s}.jsonl" for s in ("train", "valid", "test")},
        a.out_dir / "eval_metrics.json",
        a.out_dir / "per_article.tsv",
        a.out_dir / "generations.jsonl",
        dict(
            mask_prompt=a.mask_prompt,
            max_seq_length=a.max_seq_length,
            batch_size=a.batch_size,
            prompts=a.prompt,
            max_tokens=a.max_tokens,
            temperature=a.temperature,
            top_p=a.top_p,
            seed=a.seed,
            heldout_prompts=a.heldout_prompts,
            train_sample_articles=a.train_sample_articles,
        ),
        a.log,
    )
