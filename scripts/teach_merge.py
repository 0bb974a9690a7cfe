"""Rule teach_merge: the teach shards -> results/data/teach/{samples,heldout}.jsonl, drops/counts TSV."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Snakemake sets __file__ to this file

from blogtune.logs import setup_logging, snakemake_log  # noqa: E402
from blogtune.teach.stage import merge  # noqa: E402

NAMES = ("samples", "heldout", "drops", "counts", "stats")

if "snakemake" in globals():
    smk = snakemake  # noqa: F821
    setup_logging(snakemake_log(smk))
    n = len(smk.input.samples)
    shards = [{k: smk.input[k][i] for k in NAMES} for i in range(n)]
    stats = merge(shards, {k: smk.output[k] for k in NAMES})["stats"]
    logging.getLogger("blogtune.teach").info(
        "teach: %d posts (%d asked, %d from cache), %d teacher requests; samples %s; held out %s; %d dropped",
        stats["posts"], stats["posts_asked"], stats["posts_cached"], stats["requests"], stats["samples_by_kind"],
        stats["heldout_by_kind"], stats["dropped"])
