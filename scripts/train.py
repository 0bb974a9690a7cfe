"""Rule train: MLX base model + formatted data -> LoRA/DoRA/full adapters, loss curve, summary.

Standalone:  python scripts/train.py MODEL_DIR DATA_DIR OUT_DIR [--settings settings.json]
             [--set key=value ...] [--resume-dir DIR] [--threads N]
An interrupted run (SIGTERM/SIGINT) checkpoints into the resume dir and exits 128+signal;
rerunning the same job continues from there.
"""

import argparse
import json
import logging
import sys
from pathlib import Path

from blogtune.logs import setup_logging, snakemake_log

log = logging.getLogger("train")


def main(
    model_dir,
    train_file,
    out_dir,
    loss_csv,
    summary,
    settings: dict,
    resume_dir=None,
    threads=None,
    log_file=None,
) -> int:
    setup_logging(log_file)
    from blogtune import blas

    blas.setup_mlx_cpu(threads)  # before mlx is imported anywhere
    from blogtune.io_utils import atomic_write_json
    from blogtune.train.loop import TrainingInterrupted, TrainSettings, train

    ts = TrainSettings.from_dict(settings)
    data_dir = Path(train_file).parent
    log.info("settings: %s", json.dumps(ts.to_dict()))
    try:
        result = train(
            model_dir, data_dir, out_dir, ts, loss_csv=loss_csv, resume_dir=resume_dir, threads=threads
        )
    except TrainingInterrupted as err:
        log.warning("%s; rerun the same job to resume from %s", err, resume_dir)
        return 128 + err.signum
    info = blas.blas_report(measure=True)
    log.info("BLAS: %s", info)
    atomic_write_json(summary, {"settings": ts.to_dict(), **result.to_dict(), "blas": info})
    return 0


if "snakemake" in globals():
    smk = snakemake  # noqa: F821
    sys.exit(
        main(
            smk.input.model,
            smk.input.train,
            smk.output.adapters,
            smk.output.loss_csv,
            smk.output.summary,
            dict(smk.params.settings),
            smk.params.get("resume_dir"),
            smk.threads,
            snakemake_log(smk),
        )
    )
elif __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("data_dir", help="folder with train.jsonl and valid.jsonl")
    ap.add_argument("out_dir", help="adapters folder to write")
    ap.add_argument("--settings", help="JSON file of train settings")
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override one setting (JSON value)"
    )
    ap.add_argument("--loss-csv")
    ap.add_argument("--summary")
    ap.add_argument("--resume-dir")
    ap.add_argument("--threads", type=int)
    a = ap.parse_args()
    values = json.loads(Path(a.settings).read_text()) if a.settings else {}
    for item in a.set:
        key, _, raw = item.partition("=")
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    out = Path(a.out_dir)
    sys.exit(
        main(
            a.model_dir,
            Path(a.data_dir) / "train.jsonl",
            out,
            a.loss_csv or out.parent / "loss.csv",
            a.summary or out.parent / "summary.json",
            values,
            a.resume_dir,
            a.threads,
        )
    )
