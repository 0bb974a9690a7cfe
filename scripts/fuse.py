"""Rule fuse: base MLX model + LoRA adapters -> de-quantized fused model with its tokenizer."""

import argparse
from pathlib import Path

from blogtune.logs import setup_logging, snakemake_log


def main(model_dir, adapters, out_dir, log_file=None):
    setup_logging(log_file)
    from blogtune.blas import use_fast_blas

    use_fast_blas()
    from blogtune.train.fuse import fuse_adapters

    fuse_adapters(Path(model_dir), Path(adapters), Path(out_dir))


if "snakemake" in globals():
    smk = snakemake  # noqa: F821
    main(smk.input.model, smk.input.adapters, smk.output.model, snakemake_log(smk))
elif __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model_dir")
    ap.add_argument("adapters")
    ap.add_argument("out_dir")
    a = ap.parse_args()
    main(a.model_dir, a.adapters, a.out_dir)
