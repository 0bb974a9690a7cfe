"""Rule teach_merge: the teach shards -> results/data/teach/{samples,heldout}.jsonl, drops/counts TSV.

Run by Snakemake (`script:`), or by hand: `python scripts/teach_merge.py` (via blogtune.standalone).
"""

import logging

from blogtune.logs import setup_logging, snakemake_log
from blogtune.teach.stage import merge

NAMES = ("samples", "heldout", "drops", "counts", "stats")


def main(snakemake) -> None:
    setup_logging(snakemake_log(snakemake))
    n = len(snakemake.input.samples)
    shards = [{k: snakemake.input[k][i] for k in NAMES} for i in range(n)]
    stats = merge(shards, {k: snakemake.output[k] for k in NAMES})["stats"]
    logging.getLogger("blogtune.teach").info(
        "teach: %d posts (%d asked, %d from cache), %d teacher requests; samples %s; held out %s; %d dropped",
        stats["posts"], stats["posts_asked"], stats["posts_cached"], stats["requests"], stats["samples_by_kind"],
        stats["heldout_by_kind"], stats["dropped"])


if __name__ == "__main__":
    if "snakemake" not in globals():  # run by hand: the same job Snakemake would run, from config.yaml
        from blogtune.standalone import mock_snakemake

        snakemake = mock_snakemake("teach_merge")
    main(snakemake)  # noqa: F821
