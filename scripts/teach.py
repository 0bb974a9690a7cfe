"""Rule teach: one shard of train-split posts -> knowledge samples, held-out questions, drops.

Run by Snakemake (`script:`), or by hand: `python scripts/teach.py` runs shard 0 as Snakemake
would (inputs, outputs and params from config.yaml, via blogtune.standalone).
"""

import sys

from blogtune.logs import setup_logging, snakemake_log
from blogtune.teach.cache import PostCache
from blogtune.teach.stage import TeachSettings, teach_shard
from blogtune.teach.teachers import TeachError, make_teacher

OUTPUTS = ("samples", "heldout", "drops", "counts", "stats")


def run(train, shard, n_shards, params, teacher_settings, cache_dir, out, local_model=None, threads=1,
        log_file=None) -> None:
    setup_logging(log_file)
    if teacher_settings.get("kind") == "local":
        from blogtune.blas import setup_mlx_cpu

        setup_mlx_cpu(threads)  # before mlx is imported (Linux CPU: OpenBLAS)
    try:
        teacher = make_teacher(teacher_settings, local_model)
        teach_shard(train, shard, n_shards, TeachSettings.from_params(params), teacher, PostCache(cache_dir), out)
    except TeachError as err:
        sys.exit(f"blogtune: {err}\n(posts already taught are cached in {cache_dir}; rerun to resume)")


def _one(files):
    """A named input of zero or one path: Snakemake gives a str, or an empty list."""
    return files if isinstance(files, str) else (files[0] if len(files) else None)


def main(snakemake) -> None:
    p = snakemake.params
    run(snakemake.input.train, int(snakemake.wildcards.shard), p.shards, p.settings, p.teacher, p.cache_dir,
        {k: snakemake.output[k] for k in OUTPUTS}, _one(snakemake.input.teacher_model), snakemake.threads,
        snakemake_log(snakemake))


if __name__ == "__main__":
    if "snakemake" not in globals():  # run by hand: the same job Snakemake would run, from config.yaml
        from blogtune.standalone import mock_snakemake

        snakemake = mock_snakemake("teach", shard="0")
    main(snakemake)  # noqa: F821
