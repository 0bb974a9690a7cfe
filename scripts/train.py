"""Rule train: MLX base model + formatted data -> LoRA/DoRA/full adapters, loss curve, summary.

Standalone: `python scripts/train.py` runs the job `snakemake train` would (config.yaml's settings).
With train.distributed it starts that many mlx.distributed processes (blogtune.train.launch).
An interrupted run (SIGTERM/SIGINT) checkpoints into the resume dir and exits 128+signal;
rerunning the same job continues from there.
"""

import sys

from blogtune.logs import snakemake_log
from blogtune.train.launch import run_train


def main(snakemake) -> int:
    return run_train(
        {
            "model_dir": str(snakemake.input.model),
            "train_file": str(snakemake.input.train),
            "out_dir": str(snakemake.output.adapters),
            "loss_csv": str(snakemake.output.loss_csv),
            "summary": str(snakemake.output.summary),
            "settings": dict(snakemake.params.settings),
            "resume_dir": snakemake.params.get("resume_dir"),
            "threads": snakemake.threads,
            "log_file": snakemake_log(snakemake),
        }
    )


if __name__ == "__main__":
    if "snakemake" not in globals():  # run by hand: the same job Snakemake would run, from config.yaml
        from blogtune.standalone import mock_snakemake

        snakemake = mock_snakemake("train")
    sys.exit(main(snakemake))  # noqa: F821
