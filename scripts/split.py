"""Rule `split`: chunks.jsonl -> train/valid/test JSONL, split stats and cross-split duplicates.

Run by Snakemake (`script:`), or by hand: `python scripts/split.py` runs the job Snakemake would
(inputs, outputs and params from config.yaml, via blogtune.standalone).
"""

# No `from __future__` here: Snakemake prepends its preamble to script files.
import logging
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from blogtune.data.splitting import SPLITS, assign_splits, cross_split_duplicates, split_stats
from blogtune.io_utils import atomic_open, atomic_write_jsonl, read_jsonl
from blogtune.logs import setup_logging, snakemake_log

log = logging.getLogger("blogtune.split")


def run(
    chunks_in: str | Path,
    outputs: Mapping[str, str | Path],
    stats_out: str | Path,
    duplicates_out: str | Path,
    fractions: Mapping[str, float],
    salt: str = "",
) -> pd.DataFrame:
    """`outputs` maps train/valid/test to JSONL paths. Returns the stats table."""
    chunks = list(read_jsonl(chunks_in))
    assigned = assign_splits((c["article_id"] for c in chunks), fractions, salt, source=str(chunks_in))
    by_split = {s: [c for c in chunks if assigned[c["article_id"]] == s] for s in SPLITS}
    kept, duplicates = cross_split_duplicates(by_split)
    for s in SPLITS:
        atomic_write_jsonl(outputs[s], kept[s])
    stats = split_stats(kept)
    with atomic_open(stats_out) as fh:
        stats.to_csv(fh, sep="\t")
    with atomic_open(duplicates_out) as fh:
        duplicates.to_csv(fh, sep="\t", index=False)
    if len(duplicates):
        log.warning(
            "%d valid/test chunk(s) repeat text from an earlier split; dropped (see %s)",
            len(duplicates),
            duplicates_out,
        )
    log.info(
        "split (salt %r): %s",
        salt,
        "; ".join(
            f"{s} {stats.loc[s, 'articles']} articles / {stats.loc[s, 'chunks']} chunks" for s in SPLITS
        ),
    )
    return stats


def main(snakemake) -> None:
    setup_logging(snakemake_log(snakemake))
    run(
        chunks_in=snakemake.input.chunks,
        outputs={s: snakemake.output[s] for s in SPLITS},
        stats_out=snakemake.output.stats,
        duplicates_out=snakemake.output.duplicates,
        fractions=dict(snakemake.params.fractions),
        salt=str(snakemake.params.salt or ""),
    )


if __name__ == "__main__":
    if "snakemake" not in globals():  # run by hand: the same job Snakemake would run, from config.yaml
        from blogtune.standalone import mock_snakemake

        snakemake = mock_snakemake("split")
    main(snakemake)  # noqa: F821
