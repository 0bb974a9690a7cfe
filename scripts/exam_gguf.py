"""Rule exam_gguf: the exported GGUF in llama.cpp with the Modelfile's template, stops and
sampling; the exam's short-answer items; greedy agreement with the fused MLX model.
Without llama-cpp-python it records "skipped: llama-cpp-python not installed".

Standalone: python scripts/exam_gguf.py GGUF MODELFILE FUSED EXAM_ROWS --out-dir /tmp/exam
"""

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blogtune.io_utils import atomic_write_json, atomic_write_jsonl, read_jsonl  # noqa: E402
from blogtune.logs import setup_logging, snakemake_log  # noqa: E402

log = logging.getLogger("blogtune.exam_gguf")


def main(gguf, modelfile, fused, rows_in, metrics_out, rows_out, system, parameters, template, max_tokens, log_file=None) -> None:
    setup_logging(log_file)
    from blogtune.blas import use_fast_blas

    use_fast_blas()
    from blogtune.exam.llamacpp import gguf_check

    items = [r for r in read_jsonl(rows_in) if "finish" in r["base"]]  # the short-answer items
    metrics, rows = gguf_check(Path(gguf), Path(fused), Path(modelfile), items, system=system, parameters=parameters, template=template, max_tokens=max_tokens)
    atomic_write_json(metrics_out, metrics)
    atomic_write_jsonl(rows_out, rows)
    if metrics["status"] != "ok":
        log.warning("%s", metrics["status"])
    else:
        s = metrics["all"]
        log.info(
            "llama.cpp: stop rate %.0f%% (Modelfile sampling) / %.0f%% (greedy); greedy agreement with MLX %d/%d prompts",
            100 * (s["modelfile_sampling"]["stop_rate"]["rate"] or 0),
            100 * (s["greedy"]["stop_rate"]["rate"] or 0),
            metrics["greedy_agreement_with_mlx"]["identical"],
            metrics["greedy_agreement_with_mlx"]["prompts"],
        )


if "snakemake" in globals():
    smk = snakemake  # noqa: F821
    p = smk.params
    main(
        smk.input.gguf, smk.input.modelfile, smk.input.fused, smk.input.rows, smk.output.metrics, smk.output.rows,
        p.system, dict(p.parameters or {}), p.template, p.max_tokens, snakemake_log(smk),
    )
elif __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    for name in ("gguf", "modelfile", "fused", "rows"):
        ap.add_argument(name)
    ap.add_argument("--out-dir", type=Path, default=Path("exam"))
    ap.add_argument("--max-tokens", type=int, default=48)
    a = ap.parse_args()
    params = {"temperature": 0.7, "top_p": 0.9, "num_ctx": 2048, "repeat_penalty": 1.1}
    main(a.gguf, a.modelfile, a.fused, a.rows, a.out_dir / "gguf_metrics.json", a.out_dir / "gguf_answers.jsonl", None, params, None, a.max_tokens)
