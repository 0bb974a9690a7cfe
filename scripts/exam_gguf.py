"""Rule exam_gguf: the exported GGUF in llama.cpp with the Modelfile's template, stops and
sampling; the exam's short-answer items (the first exam.gguf_greedy_items greedy too); greedy agreement with the fused MLX model.
Without llama-cpp-python it records "skipped: llama-cpp-python not installed".

Run by Snakemake (`script:`), or by hand: `python scripts/exam_gguf.py` runs the job Snakemake would
(inputs, outputs and params from config.yaml, via blogtune.standalone).
"""

import logging
from pathlib import Path

from blogtune.io_utils import atomic_write_json, atomic_write_jsonl, read_jsonl
from blogtune.logs import setup_logging, snakemake_log

log = logging.getLogger("blogtune.exam_gguf")


def run(gguf, modelfile, fused, rows_in, metrics_out, rows_out, system, parameters, template, max_tokens, greedy_items=None, log_file=None) -> None:
    setup_logging(log_file)
    from blogtune.blas import use_fast_blas

    use_fast_blas()
    from blogtune.exam.llamacpp import gguf_check

    items = [r for r in read_jsonl(rows_in) if "finish" in r["base"]]  # the short-answer items
    metrics, rows = gguf_check(Path(gguf), Path(fused), Path(modelfile), items, system=system, parameters=parameters, template=template, max_tokens=max_tokens, greedy_items=greedy_items)
    atomic_write_json(metrics_out, metrics)
    atomic_write_jsonl(rows_out, rows)
    if metrics["status"] != "ok":
        log.warning("%s", metrics["status"])
    else:
        s, ag = metrics["all"], metrics["greedy_agreement_with_mlx"]
        log.info(
            "llama.cpp: stop rate %.0f%% (Modelfile sampling, %d items) / %.0f%% (greedy, %d items); greedy tokens = MLX %d/%d prompts, largest gap below MLX's top token %.3g nats (ties under %g)",
            100 * (s["modelfile_sampling"]["stop_rate"]["rate"] or 0),
            s["modelfile_sampling"]["answers"],
            100 * (s["greedy"]["stop_rate"]["rate"] or 0),
            s["greedy"]["answers"],
            ag["identical"], ag["prompts"], ag["max_gap_nats"], ag["tie_nats"],
        )
        if ag["consistent"] < ag["prompts"]:
            log.warning(
                "llama.cpp and MLX part by more than a rounding tie (%.3g nats on %d of %d prompts): the GGUF "
                "computes something else than the fused model (a wrong GGUF key?) or export.gguf_type rounds coarsely",
                ag["max_gap_nats"], ag["prompts"] - ag["consistent"], ag["prompts"],
            )


def main(snakemake) -> None:
    p = snakemake.params
    run(
        snakemake.input.gguf, snakemake.input.modelfile, snakemake.input.fused, snakemake.input.rows,
        snakemake.output.metrics, snakemake.output.rows, p.system, dict(p.parameters or {}), p.template,
        p.max_tokens, p.greedy_items, snakemake_log(snakemake),
    )


if __name__ == "__main__":
    if "snakemake" not in globals():  # run by hand: the same job Snakemake would run, from config.yaml
        from blogtune.standalone import mock_snakemake

        snakemake = mock_snakemake("exam_gguf")
    main(snakemake)  # noqa: F821
