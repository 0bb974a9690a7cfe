"""Rule format: split chunks -> mlx-lm training samples in the base model's chat format."""

import argparse
from pathlib import Path

from blogtune.formatting import end_of_turn_text, format_splits
from blogtune.io_utils import atomic_write_json
from blogtune.logs import setup_logging, snakemake_log

SPLITS = ("train", "valid", "test")


def main(split_files, out_files, model_dir, stats_path, style="chat", prompts=None, system_prompt=None,
         max_seq_length=None, log_file=None):
    setup_logging(log_file)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    stats = format_splits(split_files, out_files, tokenizer, style, prompts, system_prompt, max_seq_length)
    atomic_write_json(
        stats_path,
        {"style": style, "eos_token": tokenizer.eos_token, "end_of_turn": end_of_turn_text(tokenizer) if style == "chat"
         else None, "max_seq_length": max_seq_length, "splits": stats},
    )


if "snakemake" in globals():
    smk = snakemake  # noqa: F821
    main(
        {s: Path(smk.input[s]) for s in SPLITS},
        {s: Path(smk.output[s]) for s in SPLITS},
        smk.input.model,
        smk.output.stats,
        smk.params.style,
        smk.params.prompts,
        smk.params.system_prompt,
        smk.params.max_seq_length,
        snakemake_log(smk),
    )
elif __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("split_dir", type=Path, help="folder with train/valid/test.jsonl chunks")
    ap.add_argument("model_dir", help="base model folder (for its tokenizer)")
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--style", default="chat", choices=["chat", "text"])
    ap.add_argument("--system-prompt")
    ap.add_argument("--max-seq-length", type=int, help="cut chunks whose samples are longer")
    a = ap.parse_args()
    main({s: a.split_dir / f"{s}.jsonl" for s in SPLITS}, {s: a.out_dir / f"{s}.jsonl" for s in SPLITS},
         a.model_dir, a.out_dir / "format_stats.json", a.style, None, a.system_prompt, a.max_seq_length)
