"""Stage teach against a real OpenAI-compatible server (llama.cpp's, on an f16 GGUF blogtune wrote
from the embedded model), inside the workflow: teacher requests counted on a first run and after
a new post, rerun reasons from `snakemake -n`, and held-out questions absent from training files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blogtune.data.splitting import split_of
from blogtune.io_utils import read_jsonl
from blogtune.teach.sections import post_sections
from blogtune.teach.stage import MIN_PROSE_CHARS, TeachSettings, teach_posts
from blogtune.teach.teachers import OpenAITeacher
from blogtune.testing import dry_run_reasons, run_snakemake, write_config

FRACTIONS = {"train": 0.6, "valid": 0.2, "test": 0.2}
TOPICS = ["VACUUM", "autovacuum", "pg_tidy", "checkpoints", "WAL archiving", "pgbench"]


def write_post(blog: Path, name: str, topic: str) -> Path:
    path = blog / "2024" / f"{name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"# Notes on {topic}\n\n## Background\n\nA reader asked why {topic} matters on a 50 GB table; "
        f"the short answer is bloat.\n\n## Hands-on\n\nRun `{topic.lower().replace(' ', '_')} --verbose` "
        "nightly and keep `--jobs 2` so that writers are never blocked.\n", encoding="utf-8")
    return path


def asked_sections(chunks: list[dict]) -> int:
    return sum(len(s.prose) >= MIN_PROSE_CHARS for s in post_sections(chunks))


def test_llama_cpp_server_teaches_and_every_post_is_cached(llama_server, tmp_path):
    from blogtune.teach.cache import PostCache

    chunks = [{"article_id": "p/1", "title": "pg_tidy", "part": 1, "parts": 1, "heading_path": [],
               "text": "# pg_tidy\n\n## Hands-on\n\nRun `pg_tidy --dry-run` first: it prints the plan and "
                       "touches nothing. `--jobs 2` rebuilds two tables at once.\n"}]
    teacher = OpenAITeacher(llama_server.url, "blogtune", concurrency=2, max_tokens=48, temperature=0.0)
    result = teach_posts(chunks, TeachSettings(questions_per_section=2, rewrites=("summary",)), teacher,
                         PostCache(tmp_path))
    assert result["stats"]["requests"] == 2 and result["stats"]["output_tokens"] > 0
    answers = json.loads(next(tmp_path.rglob("*.json")).read_text())["answers"]
    assert set(answers) == {"qa:0", "rw:summary:0"} and all(a.strip() for a in answers.values())
    kinds = {(r["kind"], r["source"]) for r in result["samples"] + result["heldout"]}
    assert ("fact", "view") in kinds and ("rewrite", "teacher") in kinds
    # whatever the 135M teacher wrote is either kept (grounded) or listed with a reason
    made = sum(1 for r in result["samples"] + result["heldout"] if r["source"] == "teacher")
    assert made + sum(d["source"] == "teacher" for d in result["drops"]) >= 1


@pytest.fixture(scope="module")
def teach_work(tmp_path_factory, tiny_model_factory, llama_server):
    root = tmp_path_factory.mktemp("teach_workflow")
    blog, work = root / "blog", root / "work"
    for i, topic in enumerate(TOPICS[:5]):
        write_post(blog, f"2024010{i}_01", topic)
    overrides = {
        "blog": {"dir": str(blog)}, "base_model": str(tiny_model_factory("llama")), "split": {"fractions": FRACTIONS},
        "train": {"max_seq_length": 256},
        "teach": {"posts_per_shard": 2, "questions_per_section": 1, "rewrites": [],
                  "teacher": {"kind": "openai", "base_url": llama_server.url, "model": "blogtune",
                              "max_tokens": 24, "temperature": 0.0, "concurrency": 2}},
    }
    write_config(work, overrides)
    run_snakemake(work, "format")
    return {"blog": blog, "work": work, "overrides": overrides}


def teach_stats(work: Path) -> dict:
    return json.loads((work / "results/data/teach/stats.json").read_text())


def train_chunks(work: Path) -> list[dict]:
    return list(read_jsonl(work / "results/data/split/train.jsonl"))


def test_first_run_asks_once_per_section_of_train_posts_in_shards(teach_work):
    work = teach_work["work"]
    chunks = train_chunks(work)
    posts = {c["article_id"] for c in chunks}
    stats = teach_stats(work)
    expected = sum(asked_sections([c for c in chunks if c["article_id"] == p]) for p in posts)
    assert stats["requests"] == expected > 0 and stats["posts_asked"] == len(posts) == 3
    assert stats["shards"] == 2 and len(list((work / "results/data/teach/shards").iterdir())) == 2
    held = {r["article_id"] for r in read_jsonl(work / "results/data/teach/heldout.jsonl")}
    assert held == posts, "every trained post has held-out questions; valid/test posts are not taught"
    counts = (work / "results/data/teach/counts.tsv").read_text()
    assert "made\tdropped\theldout\ttrain" in counts.splitlines()[0]
    assert dry_run_reasons(work, "format") == {}


def test_heldout_questions_never_reach_the_training_files(teach_work):
    work = teach_work["work"]
    held = list(read_jsonl(work / "results/data/teach/heldout.jsonl"))
    (slug,) = [p.name for p in (work / "results").iterdir() if p.name != "data"]
    trained = [r for s in ("train", "valid", "test") for r in read_jsonl(work / f"results/{slug}/data/{s}.jsonl")]
    assert any(r.get("source") for r in trained), "knowledge samples are in the training file"
    users = {m["content"] for r in trained for m in r["messages"] if m["role"] == "user"}
    answers = {(r["article_id"], r["messages"][-1]["content"]) for r in trained}
    for row in held:
        assert row["question"] not in users and (row["article_id"], row["answer"]) not in answers


def test_training_and_mix_settings_never_ask_the_teacher(teach_work):
    work, base = teach_work["work"], teach_work["overrides"]
    try:
        write_config(work, {**base, "train": {**base["train"], "rank": 8, "learning_rate": 1e-4}})
        assert "teach" not in dry_run_reasons(work, "fuse")
        write_config(work, {**base, "format": {"mix": {"weights": {"views": 0.5}}}})
        assert set(dry_run_reasons(work, "format")) == {"format"}
    finally:
        write_config(work, base)


def test_changed_prompt_or_teacher_reruns_teach(teach_work):
    work, base = teach_work["work"], teach_work["overrides"]
    changes = [{"questions_per_section": 2}, {"teacher": {**base["teach"]["teacher"], "model": "other"}}]
    try:
        for change in changes:
            write_config(work, {**base, "teach": {**base["teach"], **change}})
            reasons = dry_run_reasons(work, "format")
            assert {"teach", "teach_merge", "format"} <= set(reasons) and "Params have changed" in reasons["teach"]
    finally:
        write_config(work, base)


def test_new_post_asks_only_about_itself(teach_work):
    work, blog = teach_work["work"], teach_work["blog"]
    before = teach_stats(work)
    name = next(f"20990{i}_01" for i in range(100) if split_of(f"2024/20990{i}_01", FRACTIONS) == "train")
    post = write_post(blog, name, TOPICS[5])
    try:
        reasons = dry_run_reasons(work, "format")
        assert {"chunk", "split", "teach", "teach_merge", "format"} <= set(reasons)
        run_snakemake(work, "format")
        after = teach_stats(work)
        new = [c for c in train_chunks(work) if c["article_id"] == f"2024/{name}"]
        assert new and after["requests"] == asked_sections(new), "only the new post is asked"
        assert after["posts_asked"] == 1 and after["posts_cached"] == before["posts_asked"]
    finally:
        post.unlink()
    run_snakemake(work, "format")
    assert teach_stats(work)["requests"] == 0, "removing it asks nothing either"


def test_interrupted_teach_job_fails_clearly_and_resumes_without_asking_again(tmp_path):
    """The teach rule alone (no model needed): the endpoint fails after the first post's requests;
    the job fails naming the post and the endpoint; the rerun asks only about unfinished posts."""
    from blogtune.testing_servers import FlakyServer

    blog, work = tmp_path / "blog", tmp_path / "work"
    for i, topic in enumerate(TOPICS[:5]):
        write_post(blog, f"2024010{i}_01", topic)
    answer = "Q: How often is the command run?\nA: Run it nightly."
    with FlakyServer("status500", good=2, answer=answer) as server:
        overrides = {"blog": {"dir": str(blog)}, "split": {"fractions": FRACTIONS},
                     "teach": {"questions_per_section": 1, "rewrites": [],
                               "teacher": {"kind": "openai", "base_url": server.url, "model": "m",
                                           "concurrency": 1, "retries": 0}}}
        write_config(work, overrides)
        proc = run_snakemake(work, "results/data/teach/stats.json", check=False)
        assert proc.returncode != 0
        log = (work / "logs/teach/shard0.log").read_text() + proc.stderr
        assert "failed" in log and server.url in log and "post 2024/" in log
        assert len(list((work / "results/data/teach/cache").rglob("*.json"))) == 1
        assert not (work / "results/data/teach/shards/0/samples.jsonl").exists()
        server.good = 10**6
        asked = server.requests
        run_snakemake(work, "results/data/teach/stats.json")
        stats = teach_stats(work)
        assert stats["posts_cached"] == 1 and stats["posts_asked"] == 2
        assert server.requests - asked == stats["requests"] == 4
        assert any(r["source"] == "teacher" for r in read_jsonl(work / "results/data/teach/samples.jsonl"))
