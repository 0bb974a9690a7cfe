"""Rule convert: base model (HF folder or repo id) -> MLX model, quantized per config."""

import argparse
import logging
from pathlib import Path

from blogtune.logs import setup_logging, snakemake_log
from blogtune.model_prep import accelerator, convert_to_mlx, plan_conversion


def main(source, out_dir, quantize="auto", bits=4, group_size=64, dtype="auto", trust_remote_code=False, log_file=None,
         eos_token=None, bos_token=None):
    setup_logging(log_file)
    plan = plan_conversion(quantize, bits, group_size, dtype, accelerator())
    logging.getLogger("convert").info("plan: %s", plan.describe())
    convert_to_mlx(source, Path(out_dir), plan, trust_remote_code=trust_remote_code, eos_token=eos_token,
                   bos_token=bos_token)


if "snakemake" in globals():
    p = snakemake.params  # noqa: F821
    main(p.source, snakemake.output.model, p.quantize, p.bits, p.group_size, p.dtype,  # noqa: F821
         p.trust_remote_code, snakemake_log(snakemake), p.eos_token, p.bos_token)  # noqa: F821
elif __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("source")
    ap.add_argument("out_dir")
    ap.add_argument("--quantize", default="auto", type=lambda s: s if s == "auto" else s.lower() == "true")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--eos-token", default=None, help="repair the model's eos_token")
    ap.add_argument("--bos-token", default=None, help="repair the model's bos_token")
    a = ap.parse_args()
    main(a.source, a.out_dir, a.quantize, a.bits, a.group_size, a.dtype, eos_token=a.eos_token, bos_token=a.bos_token)
