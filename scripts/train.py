"""Rule train: MLX base model + formatted data -> LoRA/DoRA/full adapters, loss curve, summary.

Standalone: `python scripts/train.py` runs the job `snakemake train` would (config.yaml's settings).
An interrupted run (SIGTERM/SIGINT) checkpoints into the resume dir and exits 128+signal;
rerunning the same job continues from there.
"""

import json
import logging
import sys
from pathlib import Path

from blogtune.logs import setup_logging, snakemake_log

log = logging.getLogger("train")


def run(
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
    from blogtune.train import TrainingInterrupted, TrainSettings, train

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


def main(snakemake) -> int:
    return run(
        snakemake.input.model,
        snakemake.input.train,
        snakemake.output.adapters,
        snakemake.output.loss_csv,
        snakemake.output.summary,
        dict(snakemake.params.settings),
        snakemake.params.get("resume_dir"),
        snakemake.threads,
        snakemake_log(snakemake),
    )


if __name__ == "__main__":
    if "snakemake" not in globals():  # run by hand: the same job Snakemake would run, from config.yaml
        from blogtune.standalone import mock_snakemake

        snakemake = mock_snakemake("train")
    sys.exit(main(snakemake))  # noqa: F821
