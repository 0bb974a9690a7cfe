"""Rule convert: base model (HF folder or repo id) -> MLX model, quantized per config."""

import logging
from pathlib import Path

from blogtune.logs import setup_logging, snakemake_log
from blogtune.model.convert import accelerator, convert_to_mlx, plan_conversion


def run(source, out_dir, quantize, bits, group_size, dtype, trust_remote_code=False, log_file=None,
        eos_token=None, bos_token=None) -> None:
    setup_logging(log_file)
    plan = plan_conversion(quantize, bits, group_size, dtype, accelerator())
    logging.getLogger("convert").info("plan: %s", plan.describe())
    convert_to_mlx(source, Path(out_dir), plan, trust_remote_code=trust_remote_code, eos_token=eos_token,
                   bos_token=bos_token)


def main(snakemake) -> None:
    p = snakemake.params
    run(p.source, snakemake.output.model, p.quantize, p.bits, p.group_size, p.dtype, p.trust_remote_code,
        snakemake_log(snakemake), p.eos_token, p.bos_token)


if __name__ == "__main__":
    if "snakemake" not in globals():  # run by hand: the same job Snakemake would run, from config.yaml
        from blogtune.standalone import mock_snakemake

        snakemake = mock_snakemake("convert")
    main(snakemake)  # noqa: F821
