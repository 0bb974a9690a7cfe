"""Rule report_assets: plots, HTML tables and metrics.json for `snakemake --report`.

Run by Snakemake (`script:`), or by hand: `python scripts/report_assets.py` runs the job Snakemake would
(inputs, outputs and params from config.yaml, via blogtune.standalone).
"""

# No `from __future__` here: Snakemake prepends its preamble to script files.
import json
import logging
from pathlib import Path

import pandas as pd

from blogtune.io_utils import atomic_write_json, atomic_write_text, read_jsonl
from blogtune.logs import setup_logging, snakemake_log
from blogtune.report import exam_pages as exam_report
from blogtune.report import pages, plots

log = logging.getLogger("blogtune.report_assets")

HTML_OUTPUTS = ("exam", "before_after", "articles", "generations", "corpus", "split", "artefacts")
PNG_OUTPUTS = ("exam_plot", "loss_plot", "lr_plot", "throughput_plot", "chunk_plot", "perplexity_plot")
ARTEFACT_NAMES = {
    "chunks": "Chunks (chunks.jsonl)",
    "mlx_base": "MLX base model",
    "adapters": "LoRA adapters",
    "fused": "Fused model",
    "gguf": "GGUF file",
    "modelfile": "Ollama Modelfile",
}


def _read_tsv(path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", keep_default_na=False, na_values=[""])


def _read_json(path) -> dict:
    p = Path(path)
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}


def run(inputs: dict, outputs: dict, params: dict, log_file=None) -> None:
    setup_logging(log_file)
    articles = _read_tsv(inputs["articles"])
    rejects = _read_tsv(inputs["rejects"])
    chunk_chars = [len(c.get("text", "")) for c in read_jsonl(inputs["chunks"])]
    split_stats = _read_tsv(inputs["split_stats"])
    duplicates = _read_tsv(inputs["duplicates"])
    loss = plots.read_loss_csv(inputs["loss_csv"])
    train_summary = _read_json(inputs["train_summary"])
    eval_metrics = _read_json(inputs["eval_metrics"])
    per_article = _read_tsv(inputs["per_article"])
    generations = list(read_jsonl(inputs["generations"]))
    data_stats = eval_metrics.get("data", {})
    max_tokens = eval_metrics.get("settings", {}).get("max_tokens")

    exam = _read_json(inputs.get("exam_metrics") or "")
    gguf_exam = _read_json(inputs["gguf_metrics"]) if inputs.get("gguf_metrics") else {}
    exam_rows = list(read_jsonl(inputs["exam_rows"])) if inputs.get("exam_rows") else []
    exam_report.plot_exam(exam, outputs["exam_plot"])
    plots.plot_loss(loss, outputs["loss_plot"])
    plots.plot_learning_rate(loss, outputs["lr_plot"])
    plots.plot_throughput(loss, outputs["throughput_plot"])
    plots.plot_chunk_lengths(chunk_chars, outputs["chunk_plot"], limit=params.get("max_chars"))
    plots.plot_article_perplexity(per_article, outputs["perplexity_plot"])

    artefacts = {label: inputs[key] for key, label in ARTEFACT_NAMES.items() if inputs.get(key)}
    html = {
        "exam": exam_report.exam_page(exam, gguf_exam, exam_rows),
        "before_after": pages.before_after_page(eval_metrics),
        "articles": pages.per_article_page(per_article),
        "generations": pages.generations_page(generations, max_tokens),
        "corpus": pages.corpus_page(articles, rejects, chunk_chars, data_stats),
        "split": pages.split_page(split_stats, duplicates, data_stats),
        "artefacts": pages.artefacts_page(artefacts),
    }
    for key, text in html.items():
        atomic_write_text(outputs[key], text)

    corpus = {
        "posts_selected": len(articles),
        "posts_skipped": len(rejects),
        "chunks": len(chunk_chars),
        "characters": int(sum(chunk_chars)),
        "tokens": {split: s.get("tokens") for split, s in data_stats.items()},
        "truncated_samples": sum(int(s.get("truncated") or 0) for s in data_stats.values()),
    }
    metrics = pages.run_metrics(
        base_model=str(params.get("base_model")),
        model_slug=str(params.get("model_slug")),
        data_hash=str(params.get("data_hash")),
        config_hash=str(params.get("config_hash")),
        eval_metrics=eval_metrics,
        loss=loss,
        train_summary=train_summary,
        corpus=corpus,
    )
    metrics = {"exam": exam_report.headline(exam, gguf_exam), **metrics}  # the headline first
    metrics["artefacts"] = {label: pages.path_size(path) for label, path in artefacts.items()}
    atomic_write_json(outputs["metrics"], metrics)
    log.info("report assets: %d HTML pages, %d plots, %s", len(html), len(PNG_OUTPUTS), outputs["metrics"])


INPUT_KEYS = (
    "chunks",
    "articles",
    "rejects",
    "split_stats",
    "duplicates",
    "loss_csv",
    "train_summary",
    "eval_metrics",
    "per_article",
    "generations",
    "exam_metrics",
    "exam_rows",
    "gguf_metrics",
    *ARTEFACT_NAMES,
)


def main(snakemake) -> None:
    run(
        {k: snakemake.input.get(k) for k in INPUT_KEYS},
        {k: snakemake.output[k] for k in (*HTML_OUTPUTS, *PNG_OUTPUTS, "metrics")},
        dict(snakemake.params.items()),
        snakemake_log(snakemake),
    )


if __name__ == "__main__":
    if "snakemake" not in globals():  # run by hand: the same job Snakemake would run, from config.yaml
        from blogtune.standalone import mock_snakemake

        snakemake = mock_snakemake("report_assets")
    main(snakemake)  # noqa: F821
