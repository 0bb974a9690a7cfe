"""Rule export_gguf: fused HF folder -> one GGUF file (pure Python, streamed tensor by tensor)."""

import logging
from pathlib import Path

from blogtune.logs import setup_logging, snakemake_log


def run(model_dir, gguf, outtype, name=None, log_file=None, pre_tokenizer=None, report_json=None) -> None:
    setup_logging(log_file)
    from blogtune.export.gguf import export_gguf
    from blogtune.io_utils import atomic_write_json

    report = export_gguf(Path(model_dir), Path(gguf), outtype=outtype, name=name, pre_tokenizer=pre_tokenizer)
    logging.getLogger("export_gguf").info(
        "%s %s: %d tensors, %.1f MB, %.1f s, pre-tokenizer %s (%s)",
        report.arch,
        report.outtype,
        report.n_tensors,
        report.bytes / 1e6,
        report.seconds,
        report.pre_tokenizer,
        report.pre_source,
    )
    if report_json:
        atomic_write_json(report_json, report.as_dict())


def main(snakemake) -> None:
    run(snakemake.input.model, snakemake.output.gguf, snakemake.params.outtype, snakemake.params.name,
        snakemake_log(snakemake), snakemake.params.pre_tokenizer, snakemake.output.report)


if __name__ == "__main__":
    if "snakemake" not in globals():  # run by hand: the same job Snakemake would run, from config.yaml
        from blogtune.standalone import mock_snakemake

        snakemake = mock_snakemake("export_gguf")
    main(snakemake)  # noqa: F821
