"""Rule export_gguf: fused HF folder -> one GGUF file (pure Python, streamed tensor by tensor)."""

import argparse
import logging
from pathlib import Path

from blogtune.logs import setup_logging, snakemake_log


def main(model_dir, gguf, outtype="f16", name=None, log_file=None, pre_tokenizer=None, report_json=None):
    setup_logging(log_file)
    from blogtune.gguf_export import export_gguf
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


if "snakemake" in globals():
    smk = snakemake  # noqa: F821
    main(smk.input.model, smk.output.gguf, smk.params.outtype, smk.params.name, snakemake_log(smk),
         smk.params.pre_tokenizer, smk.output.report)
elif __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model_dir", help="HF-format folder (config.json, *.safetensors, tokenizer files)")
    ap.add_argument("gguf", help="output .gguf path")
    ap.add_argument("--outtype", default="f16", help="f32 | f16 | bf16 | q8_0 | q4_0 | q4_1 | q5_0 | q5_1")
    ap.add_argument("--name", default=None, help="general.name written into the file")
    ap.add_argument("--pre-tokenizer", default=None, help="llama.cpp pre-tokenizer name (unknown BPE hashes)")
    ap.add_argument("--report", default=None, help="write what the export decided as JSON here")
    a = ap.parse_args()
    main(a.model_dir, a.gguf, a.outtype, a.name, pre_tokenizer=a.pre_tokenizer, report_json=a.report)
