"""Rule import_base: the embedded GGUF base model -> HF-format folder (float32 safetensors)."""

import argparse
from pathlib import Path

from blogtune.logs import setup_logging, snakemake_log
from blogtune.model.base_model import import_gguf_to_hf


def main(gguf: str, out_dir: str, log_file: str | None = None) -> None:
    setup_logging(log_file)
    import_gguf_to_hf(Path(gguf), Path(out_dir))


if "snakemake" in globals():
    main(snakemake.input.gguf, snakemake.output.model, snakemake_log(snakemake))  # noqa: F821
elif __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("gguf")
    ap.add_argument("out_dir")
    args = ap.parse_args()
    main(args.gguf, args.out_dir)
