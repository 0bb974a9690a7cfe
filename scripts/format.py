"""Rule format: split chunks -> mlx-lm training samples in the base model's chat format."""

import argparse
from pathlib import Path

from blogtune.formatting import format_splits
from blogtune.io_utils import atomic_write_json, read_jsonl
from blogtune.logs import setup_logging, snakemake_log

SPLITS = ("train", "valid", "test")


def main(split_files, out_files, model_dir, stats_path, style="chat", prompts=None, system_prompt=None,
         max_seq_length=None, log_file=None, knowledge=None, mix=None):
    setup_logging(log_file)
    from transformers import AutoTokenizer

    from blogtune.teach.mix import knowledge_samples

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    mix = mix or {}
    extra = {"train": knowledge_samples(read_jsonl(knowledge), mix.get("weights"), mix.get("max_per_post"), style,
                                        system_prompt)} if knowledge else None
    stats = format_splits(split_files, out_files, tokenizer, style, prompts, system_prompt, max_seq_length,
                          extra, (mix.get("weights") or {}).get("chunks", 1.0))
    atomic_write_json(
        stats_path,
        {"style": style, "eos_token": tokenizer.eos_token, "max_seq_length": max_seq_length, "splits": stats},
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
        smk.input.knowledge,
        smk.params.mix,
    )
elif __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("split_dir", type=Path, help="folder with train/valid/test.jsonl chunks")
    ap.add_argument("model_dir", help="base model folder (for its tokenizer)")
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--style", default="chat", choices=["chat", "text"])
    ap.add_argument("--system-prompt")
    ap.add_argument("--max-seq-length", type=int, help="cut chunks whose samples are longer")
    ap.add_argument("--knowledge", help="the teach stage's samples.jsonl, mixed into train")
    a = ap.parse_args()
    main({s: a.split_dir / f"{s}.jsonl" for s in SPLITS}, {s: a.out_dir / f"{s}.jsonl" for s in SPLITS},
         a.model_dir, a.out_dir / "format_stats.json", a.style, None, a.system_prompt, a.max_seq_length,
         knowledge=a.knowledge)
