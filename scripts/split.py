"""Rule `split`: chunks.jsonl -> train/valid/test JSONL, split stats and cross-split duplicates.

Run by Snakemake (`script:`), or by hand for debugging:
    python scripts/split.py results/data/chunks.jsonl --out-dir /tmp/split
"""

# No `from __future__` here: Snakemake prepends its preamble to script files.
import argparse
import logging
import sys
from collections.abc import Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Snakemake sets __file__ to this file

import pandas as pd  # noqa: E402

from blogtune.data.splitting import SPLITS, assign_splits, cross_split_duplicates, split_stats  # noqa: E402
from blogtune.io_utils import atomic_open, atomic_write_jsonl, read_jsonl  # noqa: E402

log = logging.getLogger("blogtune.split")


def setup_logging(log_file: str | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w", encoding="utf-8"))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )


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


def main_from_snakemake(smk) -> None:
    setup_logging(smk.log[0] if smk.log else None)
    run(
        chunks_in=smk.input.chunks,
        outputs={s: smk.output[s] for s in SPLITS},
        stats_out=smk.output.stats,
        duplicates_out=smk.output.duplicates,
        fractions=dict(smk.params.fractions),
        salt=str(smk.params.salt or ""),
    )


def _fractions(text: str) -> dict[str, float]:
    pairs = (item.split("=", 1) for item in text.split(",") if item.strip())
    return {k.strip(): float(v) for k, v in pairs}


def cli(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("chunks", type=Path)
    ap.add_argument(
        "--out-dir",
        type=Path,
        default=Path("results/data"),
        help="writes train/valid/test.jsonl, split_stats.tsv, duplicates.tsv here",
    )
    ap.add_argument(
        "--fractions",
        type=_fractions,
        default={"train": 0.8, "valid": 0.1, "test": 0.1},
        help="e.g. train=0.8,valid=0.1,test=0.1",
    )
    ap.add_argument("--salt", default="")
    ap.add_argument("--log", default=None)
    args = ap.parse_args(argv)
    setup_logging(args.log)
    run(
        args.chunks,
        {s: args.out_dir / f"{s}.jsonl" for s in SPLITS},
        args.out_dir / "split_stats.tsv",
        args.out_dir / "duplicates.tsv",
        args.fractions,
        args.salt,
    )


if __name__ == "__main__":
    if "snakemake" in globals():
        main_from_snakemake(snakemake)  # noqa: F821
    else:
        cli()
