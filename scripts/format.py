"""Rule format: split chunks -> mlx-lm training samples in the base model's chat format."""

from pathlib import Path

from blogtune.io_utils import atomic_write_json, read_jsonl
from blogtune.logs import setup_logging, snakemake_log
from blogtune.model.formatting import end_of_turn_text, format_splits

SPLITS = ("train", "valid", "test")


def run(split_files, out_files, model_dir, stats_path, style, prompts=None, system_prompt=None,
        max_seq_length=None, log_file=None, knowledge=None, mix=None) -> None:
    setup_logging(log_file)
    from transformers import AutoTokenizer

    from blogtune.teach import knowledge_samples

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    mix = mix or {}
    # Teach-stage samples (Q&A, rewrites, views) join the train split only, weighted per config.
    extra = {"train": knowledge_samples(read_jsonl(knowledge), mix.get("weights"), mix.get("max_per_post"), style,
                                        system_prompt)} if knowledge else None
    stats = format_splits(split_files, out_files, tokenizer, style, prompts, system_prompt, max_seq_length,
                          extra, (mix.get("weights") or {}).get("chunks", 1.0))
    atomic_write_json(
        stats_path,
        {"style": style, "eos_token": tokenizer.eos_token, "end_of_turn": end_of_turn_text(tokenizer) if style == "chat"
         else None, "max_seq_length": max_seq_length, "splits": stats},
    )


def main(snakemake) -> None:
    p = snakemake.params
    run(
        {s: Path(snakemake.input[s]) for s in SPLITS},
        {s: Path(snakemake.output[s]) for s in SPLITS},
        snakemake.input.model,
        snakemake.output.stats,
        p.style,
        p.prompts,
        p.system_prompt,
        p.max_seq_length,
        snakemake_log(snakemake),
        snakemake.input.knowledge,
        p.mix,
    )


if __name__ == "__main__":
    if "snakemake" not in globals():  # run by hand: the same job Snakemake would run, from config.yaml
        from blogtune.standalone import mock_snakemake

        snakemake = mock_snakemake("format")
    main(snakemake)  # noqa: F821
