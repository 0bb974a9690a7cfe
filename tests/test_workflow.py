"""The whole workflow on a tiny model, and what reruns after each kind of change.

Rerun behaviour is read from `snakemake -n` reasons, as a user would see it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from blogtune.io_utils import read_jsonl
from blogtune.testing import REPO, dry_run_reasons, run_snakemake, write_config

SAMPLE_POSTS = 10
TINY_TRAIN = {
    "iters": 4, "epochs": None, "batch_size": 2, "max_seq_length": 128, "num_layers": 2, "rank": 4,
    "steps_per_report": 2, "steps_per_eval": 2, "save_every": 2, "val_batches": 2, "warmup_steps": 1,
}
TINY_EVAL = {"max_tokens": 8, "heldout_prompts": 1, "train_sample_articles": 1, "prompts": ["What is pg_tidy?"]}
TINY_EXAM = {"max_items": 12, "generate_items": 4, "max_tokens": 8}
UPSTREAM = {"chunk", "split", "teach", "teach_merge", "format", "convert", "train", "fuse"}
DATA_DOWN = {"chunk", "split", "teach", "teach_merge", "format", "train", "fuse"}  # new posts, chunk settings


def copy_sample_posts(dst: Path, n: int) -> list[Path]:
    posts = sorted(p for p in (REPO / "sample_blog").rglob("*.md") if p.name != "README.md")[:n]
    out = []
    for p in posts:
        target = dst / p.relative_to(REPO / "sample_blog")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, target)
        out.append(target)
    return out


def new_post(blog: Path, name: str, title: str) -> Path:
    path = blog / "209901" / f"{name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "\n\n".join(f"Paragraph {i} about {title}: tuning, indexes and WAL." for i in range(6))
    path.write_text(f"# {title}\n\n## Background\n\n{body}\n", encoding="utf-8")
    return path


def split_assignment(work: Path) -> dict[str, str]:
    out = {}
    for split in ("train", "valid", "test"):
        for row in read_jsonl(work / f"results/data/split/{split}.jsonl"):
            out[row["article_id"]] = split
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model_factory):
    """A workdir where `snakemake fuse` has run once on a tiny model."""
    root = tmp_path_factory.mktemp("workflow")
    blog, work = root / "blog", root / "work"
    copy_sample_posts(blog, SAMPLE_POSTS)
    model = tiny_model_factory("llama")
    overrides = {"blog": {"dir": str(blog)}, "base_model": str(model), "train": TINY_TRAIN, "evaluate": TINY_EVAL, "exam": TINY_EXAM}
    write_config(work, overrides)
    run_snakemake(work, "fuse")
    (slug,) = model_dirs(work)
    return {"blog": blog, "work": work, "overrides": overrides, "model": model, "slug": slug}


def model_dirs(work: Path) -> list[str]:
    return sorted(p.name for p in (work / "results").iterdir() if p.name != "data")


def test_fuse_builds_everything_up_to_the_fused_model(built):
    work = built["work"]
    (slug,) = model_dirs(work)
    fused = work / "results" / slug / "fused"
    assert (fused / "config.json").is_file() and any(fused.glob("*.safetensors"))
    assert (fused / "tokenizer.json").is_file() and (fused / "chat_template.jinja").is_file()
    summary = json.loads((work / "results" / slug / "train/summary.json").read_text())
    assert summary["iters"] == TINY_TRAIN["iters"]
    rows = list(read_jsonl(work / "results" / slug / "data/train.jsonl"))
    assert rows and rows[0]["messages"][-1]["role"] == "assistant"
    assert (work / "logs/train").is_dir() and not (work / f"results/{slug}/gguf").exists()


def test_nothing_changed_nothing_to_do(built):
    assert dry_run_reasons(built["work"], "fuse") == {}


def test_commands_without_cores_parse_the_workflow(built):
    # `snakemake --report report.html` gives no --cores; the heavy rules' threads must not need it.
    proc = run_snakemake(built["work"], "--list-rules", cores=None)
    assert "train" in proc.stdout and "fuse" in proc.stdout


def test_changed_training_setting_reruns_train_and_fuse_only(built):
    work = built["work"]
    write_config(work, {**built["overrides"], "train": {**TINY_TRAIN, "rank": 8}})
    try:
        assert set(dry_run_reasons(work, "fuse")) == {"train", "fuse"}
    finally:
        write_config(work, built["overrides"])


def test_changed_chunk_setting_does_not_convert(built):
    work = built["work"]
    write_config(work, {**built["overrides"], "chunk": {"max_chars": 700}})
    try:
        assert set(dry_run_reasons(work, "fuse")) == DATA_DOWN
    finally:
        write_config(work, built["overrides"])


def test_changed_max_seq_length_reformats_but_does_not_rechunk(built):
    """Samples are cut to fit max_seq_length, so format depends on it; chunks and split do not."""
    work = built["work"]
    write_config(work, {**built["overrides"], "train": {**TINY_TRAIN, "max_seq_length": 256}})
    try:
        assert set(dry_run_reasons(work, "fuse")) == {"format", "train", "fuse"}
    finally:
        write_config(work, built["overrides"])


def test_new_post_reruns_data_and_training_but_not_convert(built, tmp_path):
    work, blog = built["work"], built["blog"]
    before = split_assignment(work)
    post = new_post(blog, "20990101_01", "Checkpoint tuning")
    try:
        reasons = dry_run_reasons(work, "fuse")
        assert set(reasons) == DATA_DOWN
        assert "convert" not in reasons
        run_snakemake(work, "split")
        after = split_assignment(work)
        assert "209901/20990101_01" in after
        assert {k: after[k] for k in before} == before, "old posts keep their split"
    finally:
        post.unlink()
        run_snakemake(work, "split")
    assert split_assignment(work) == before, "a deleted post leaves the dataset"


def test_another_base_model_lives_beside_the_first(built, tiny_model_factory):
    work = built["work"]
    first = model_dirs(work)
    other = tiny_model_factory("llama", seed=1)
    write_config(work, {**built["overrides"], "base_model": str(other)})
    try:
        reasons = dry_run_reasons(work, "fuse")
        assert set(reasons) == {"convert", "format", "train", "fuse"}
        run_snakemake(work, "fuse")
        assert len(model_dirs(work)) == 2 and set(first) < set(model_dirs(work))
        write_config(work, built["overrides"])
        assert dry_run_reasons(work, "fuse") == {}, "switching back is free"
    finally:
        write_config(work, built["overrides"])


def test_default_target_exports_gguf_modelfile_and_evaluation(built):
    work = built["work"]
    run_snakemake(work)
    gguf_dir = work / "results" / built["slug"] / "gguf"
    assert any(gguf_dir.glob("*.gguf")) and (gguf_dir / "Modelfile").is_file()
    assert 'PARAMETER stop "<|im_end|>"' in (gguf_dir / "Modelfile").read_text()
    assert dry_run_reasons(work) == {}
    # Export settings do not touch training or evaluation; Modelfile settings touch only it.
    changes = [
        ({"export": {"gguf_type": "q8_0"}}, None),
        ({"modelfile": {"parameters": {"temperature": 0.2, "num_ctx": 1024}}}, {"modelfile", "exam_gguf", "report_assets"}),
        ({"system_prompt": "You are my blog."}, UPSTREAM - {"chunk", "split", "teach", "teach_merge", "convert"}),
        # Exam settings rerun the exam only (items too when they change), never training.
        ({"exam": {**TINY_EXAM, "max_items": 10}}, {"exam_items", "exam", "exam_gguf", "report_assets"}),
        ({"exam": {**TINY_EXAM, "generate_items": 3}}, {"exam", "exam_gguf", "report_assets"}),
    ]
    for change, expected in changes:
        write_config(work, {**built["overrides"], **change})
        try:
            reasons = set(dry_run_reasons(work))
            if expected is None:
                assert "export_gguf" in reasons and not reasons & (UPSTREAM | {"evaluate", "exam"}), (change, reasons)
                assert "exam_gguf" in reasons, (change, reasons)  # the GGUF check follows the export
            else:
                assert expected <= reasons and not reasons & ({"chunk", "split", "convert"}), (change, reasons)
                assert ("evaluate" in reasons) == ("train" in reasons), (change, reasons)
                if "exam" not in change:
                    assert ("exam" in reasons) == ("train" in reasons), (change, reasons)
                else:
                    assert not reasons & (UPSTREAM | {"evaluate"}), (change, reasons)
        finally:
            write_config(work, built["overrides"])



def test_new_adapters_reuse_the_base_models_evaluation(built):
    """A LoRA setting retrains; evaluation and the exam then score only the new adapters: the
    base model's half comes from results/<model>/{eval,exam}/base_cache (blogtune.evaluate.base_cache)."""
    work, slug = built["work"], built["slug"]
    run_snakemake(work, "exam", "evaluate")
    write_config(work, {**built["overrides"], "train": {**TINY_TRAIN, "learning_rate": 1e-3}})
    try:
        run_snakemake(work, "exam", "evaluate")
        for stage in ("exam", "evaluate"):
            text = (work / f"logs/{stage}/{slug}.log").read_text()
            assert "base model results from the cache" in text, stage
            assert "finetuned" in text and "base: multiple choice" not in text and "base model, test split" not in text
    finally:
        write_config(work, built["overrides"])


def test_config_errors_fail_before_any_work(built, tmp_path):
    work = tmp_path / "bad"
    write_config(work, {**built["overrides"], "train": {**TINY_TRAIN, "rnak": 3}})
    proc = run_snakemake(work, "fuse", check=False)
    assert proc.returncode != 0 and "rnak" in proc.stdout + proc.stderr
    write_config(work, {**built["overrides"], "base_model": str(tmp_path / "nope")})
    proc = run_snakemake(work, "fuse", check=False)
    assert proc.returncode != 0 and "base_model" in proc.stdout + proc.stderr
    assert not (work / "results").exists()
