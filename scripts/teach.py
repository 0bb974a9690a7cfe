"""Rule teach: one shard of train-split posts -> knowledge samples, held-out questions, drops.

Run by Snakemake (`script:`), or by hand for debugging (teacher-free views only):
    python scripts/teach.py results/data/split/train.jsonl /tmp/teach
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Snakemake sets __file__ to this file

from blogtune.logs import setup_logging, snakemake_log  # noqa: E402
from blogtune.teach.cache import PostCache  # noqa: E402
from blogtune.teach.stage import TeachSettings, teach_shard  # noqa: E402
from blogtune.teach.teachers import TeachError, make_teacher  # noqa: E402

OUTPUTS = ("samples", "heldout", "drops", "counts", "stats")


def main(train, shard, n_shards, params, teacher_settings, cache_dir, out, local_model=None, threads=1, log_file=None):
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


if "snakemake" in globals():
    smk = snakemake  # noqa: F821
    main(smk.input.train, int(smk.wildcards.shard), smk.params.shards, smk.params.settings, smk.params.teacher,
         smk.params.cache_dir, {k: smk.output[k] for k in OUTPUTS},
         _one(smk.input.teacher_model), smk.threads, snakemake_log(smk))
elif __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("train", type=Path)
    ap.add_argument("out_dir", type=Path)
    a = ap.parse_args()
    main(a.train, 0, 1, {}, {"kind": "none"}, a.out_dir / "cache",
         {k: a.out_dir / f"{k}.{'jsonl' if k in ('samples', 'heldout') else 'json' if k == 'stats' else 'tsv'}"
          for k in OUTPUTS})
