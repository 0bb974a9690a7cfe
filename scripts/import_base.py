"""Rule import_base: the embedded GGUF base model -> HF-format folder (float32 safetensors)."""

from pathlib import Path

from blogtune.logs import setup_logging, snakemake_log
from blogtune.model.base_model import import_gguf_to_hf


def run(gguf: str, out_dir: str, log_file: str | None = None) -> None:
    setup_logging(log_file)
    import_gguf_to_hf(Path(gguf), Path(out_dir))


def main(snakemake) -> None:
    run(snakemake.input.gguf, snakemake.output.model, snakemake_log(snakemake))


if __name__ == "__main__":
    if "snakemake" not in globals():  # run by hand: the same job Snakemake would run, from config.yaml
        from blogtune.standalone import mock_snakemake

        snakemake = mock_snakemake("import_base")
    main(snakemake)  # noqa: F821
