"""Rule fuse: base MLX model + LoRA adapters -> de-quantized fused model with its tokenizer."""

from pathlib import Path

from blogtune.logs import setup_logging, snakemake_log


def run(model_dir, adapters, out_dir, log_file=None) -> None:
    setup_logging(log_file)
    from blogtune.blas import use_fast_blas

    use_fast_blas()
    from blogtune.train.fuse import fuse_adapters

    fuse_adapters(Path(model_dir), Path(adapters), Path(out_dir))


def main(snakemake) -> None:
    run(snakemake.input.model, snakemake.input.adapters, snakemake.output.model, snakemake_log(snakemake))


if __name__ == "__main__":
    if "snakemake" not in globals():  # run by hand: the same job Snakemake would run, from config.yaml
        from blogtune.standalone import mock_snakemake

        snakemake = mock_snakemake("fuse")
    main(snakemake)  # noqa: F821
