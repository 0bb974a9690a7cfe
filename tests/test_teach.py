"""Stage teach without a model server: sections, views, parsing, grounding, held-out questions,
the training mix, the per-post cache, the in-process teacher on a tiny model, and real HTTP
servers that misbehave."""

from __future__ import annotations

import hashlib
import json

import pytest

from blogtune.io_utils import read_jsonl
from blogtune.teach.cache import PostCache
from blogtune.teach.grounding import Limits, check
from blogtune.teach.mix import knowledge_samples
from blogtune.teach.prompts import parse_qa
from blogtune.teach.sections import split_sections
from blogtune.teach.stage import TeachSettings, hold_out, merge, teach_posts, teach_shard, write_outputs
from blogtune.teach.teachers import LocalTeacher, OpenAITeacher, TeachError
from blogtune.teach.views import VIEWS_VERSION, post_views
from blogtune.testing_servers import FlakyServer

POST = """# pg_tidy in practice

Intro paragraph about bloat and why it matters for big tables.

## Hands-on

Run `pg_tidy --dry-run` first to see the plan. Then `--jobs 2` rebuilds two tables at once.

```bash
pg_tidy --dry-run --min-bloat 30 mydb
```

## Summary

Use `--lock-timeout 2s` so that the rebuild never blocks writers for long.
"""
ZH_POST = """# 膨胀治理

## 背景

一张 50 GB 的日志表，`DELETE` 掉一半数据以后，磁盘空间一点都没少。

## 原理

普通 VACUUM 回收的空间只是在页内标记为可复用，登记到 FSM。
"""


def chunks_of(article_id: str, text: str, title: str) -> list[dict]:
    """Two chunks that join back to the post (as the chunker's do)."""
    cut = text.index("## ")
    return [{"article_id": article_id, "title": title, "part": i + 1, "parts": 2, "heading_path": [], "text": t}
            for i, t in enumerate((text[:cut], text[cut:]))]


CHUNKS = chunks_of("2024/a", POST, "pg_tidy in practice") + chunks_of("2024/b", ZH_POST, "膨胀治理")


def test_sections_follow_headings_and_carry_code():
    secs = split_sections("2024/a", "pg_tidy in practice", POST)
    assert [s.heading for s in secs] == ["pg_tidy in practice", "Hands-on", "Summary"]
    hands = secs[1]
    assert hands.code_blocks == [("bash", "pg_tidy --dry-run --min-bloat 30 mydb\n")]
    assert hands.inline_code == ["pg_tidy --dry-run", "--jobs 2"] and hands.lang == "en"
    assert split_sections("2024/b", "膨胀治理", ZH_POST)[0].lang == "zh"


def test_views_ask_for_outline_commands_and_facts_in_several_phrasings():
    views = post_views(split_sections("2024/a", "pg_tidy in practice", POST))
    kinds = {v["kind"] for v in views}
    assert kinds == {"outline", "section", "command", "fact"}
    outline = [v for v in views if v["kind"] == "outline"]
    assert len(outline) == 3 and len({v["question"] for v in outline}) == 3
    assert outline[0]["answer"] == "- Hands-on\n- Summary"
    cmd = next(v for v in views if v["kind"] == "command")
    assert cmd["answer"].startswith("```bash\npg_tidy --dry-run") and "Hands-on" in cmd["question"]
    fact = next(v for v in views if v["kind"] == "fact" and "--jobs 2" in v["question"])
    assert fact["answer"] == "Then `--jobs 2` rebuilds two tables at once."


def test_fact_answers_are_one_sentence_and_table_rows_are_written_out_with_their_headers():
    post = """# Flags

## Options

Use `--jobs` for speed. Also `--jobs` costs one connection per job.

| Flag | Default | Meaning |
|------|---------|---------|
| `--exclude` | none | tables to skip |
| `=` | | equality |
"""
    secs = split_sections("2024/c", "Flags", post)
    assert secs[-1].table_rows[0] == [("Flag", "`--exclude`"), ("Default", "none"), ("Meaning", "tables to skip")]
    facts = {v["question"].split("`")[1]: v["answer"] for v in post_views(secs) if v["kind"] == "fact"}
    assert facts == {"--jobs": "Use `--jobs` for speed.",
                     "--exclude": "Flag: `--exclude`; Default: none; Meaning: tables to skip."}
    zh = "# 参数\n\n## 选项\n\n| 参数 | 默认值 |\n|---|---|\n| `--dry-run` | 关 |\n"
    (fact,) = {v["answer"] for v in post_views(split_sections("2024/d", "参数", zh)) if v["kind"] == "fact"}
    assert fact == "参数：`--dry-run`；默认值：关。"


def test_tables_stay_out_of_section_leads_and_code_spans_do_not_decide_the_language():
    post = """# 发布

## 参数

常用参数汇总：

| 参数 | 默认值 |
|---|---|
| `--jobs` | 2 |

升级注意：`--min-bloat` 对索引和表使用同一个阈值。

## Results

| pool | TPS |
|---|---|
| 32 | 41k |

## 小结

一句话：新增 `--only-indexes`、`--report json` 和 `--min-bloat 30 --jobs 2 --lock-timeout 2s`。
"""
    params, results, summary = split_sections("2024/e", "发布", post)
    assert "|" not in params.prose and params.table_rows == [[("参数", "`--jobs`"), ("默认值", "2")]]
    assert params.inline_code == ["--jobs", "--min-bloat"]  # spans in table cells still name facts
    assert results.prose == "" and results.table_rows  # a table-only section keeps its rows ...
    views = post_views([params, results, summary])
    leads = {v["heading"]: v["answer"] for v in views if v["kind"] == "section"}
    assert leads == {"参数": "升级注意：`--min-bloat` 对索引和表使用同一个阈值。",  # ... but has no lead
                     "小结": "一句话：新增 `--only-indexes`、`--report json` 和 `--min-bloat 30 --jobs 2 --lock-timeout 2s`。"}
    assert summary.lang == "zh" and {v["lang"] for v in views} == {"zh"}


def test_leads_leave_out_sentences_that_announce_a_code_block_or_table():
    post = """# Tuning

## Checkpoints

Check the share of full page images first:

```sql
SELECT * FROM pg_stat_wal;
```

Three settings matter:

- `checkpoint_timeout` at 15 min.
- `wal_compression` on.

Results, shortened: WAL volume fell by 60%.

| before | after |
|---|---|
| 10 GB | 4 GB |
"""
    (sec,) = split_sections("2024/f", "Tuning", post)
    # Only a colon-ended sentence right above a code block or table announces something the lead
    # leaves out; a list's introduction is followed by its items, and a mid-sentence colon is prose.
    assert sec.intros == ["Check the share of full page images first:"]
    (lead,) = {v["answer"] for v in post_views([sec]) if v["kind"] == "section"}
    assert lead.startswith("Three settings matter: `checkpoint_timeout` at 15 min.")
    assert "first:" not in lead and lead.endswith("WAL volume fell by 60%.")


FILLER = "Autovacuum keeps up on most tables. " * 7
COLON_POST = f"""# Archiving

## Setup

{FILLER}Enable archiving (`archive_mode` needs a restart):

```ini
archive_mode = on
```

Three rules I apply:

- `wal_level` is `replica` or higher.
- Test the restore.

| setting | value |
|---|---|
| `archive_timeout` | 60s |
"""


def test_no_view_answer_ends_on_a_colon():
    views = post_views(split_sections("2024/g", "Archiving", COLON_POST))
    assert views and not [v for v in views if v["answer"].rstrip().endswith((":", "："))]
    (lead,) = {v["answer"] for v in views if v["kind"] == "section"}
    assert lead == FILLER.strip()  # the list's introduction did not fit with its items, so it goes too
    facts = {v["question"].split("`")[1]: v["answer"] for v in views if v["kind"] == "fact"}
    # A span named only in an introduction gets no fact question; one named in a statement does.
    assert facts == {"wal_level": "`wal_level` is `replica` or higher.", "replica": "`wal_level` is `replica` or higher.",
                     "archive_timeout": "setting: `archive_timeout`; value: 60s."}


# What the views of this file's posts are under each VIEWS_VERSION. A failure here means a view's
# question or answer changed: bump blogtune.teach.views.VIEWS_VERSION (so that existing runs redo
# the teach stage, whose outputs Snakemake would otherwise keep) and pin the new fingerprint.
VIEWS_FINGERPRINT = {"views-v2": "ec92c4377e5e085b"}


def test_a_change_in_the_views_bumps_their_version():
    posts = [("2024/a", "pg_tidy in practice", POST), ("2024/b", "膨胀治理", ZH_POST), ("2024/g", "Archiving", COLON_POST)]
    views = [post_views(split_sections(*p)) for p in posts]
    digest = hashlib.sha256(json.dumps(views, ensure_ascii=False, sort_keys=True).encode()).hexdigest()[:16]
    assert VIEWS_FINGERPRINT.get(VIEWS_VERSION) == digest, f"views changed: bump VIEWS_VERSION, pin {digest}"


def test_parse_qa_is_lenient_about_the_format():
    text = "Sure!\nQ1: What does --dry-run do?\nA1: Shows the plan.\n**Q:** Which flag?\n**A:** --jobs\n2 tables\n问：什么？\n答：FSM。"
    assert parse_qa(text) == [("What does --dry-run do?", "Shows the plan."), ("Which flag?", "--jobs\n2 tables"),
                              ("什么？", "FSM。")]
    assert parse_qa("no pairs here") == []


@pytest.mark.parametrize("answer,reason", [
    ("It shows the plan before rebuilding tables.", None),
    ("", "empty"),
    ("It needs 4 GB.", "ungrounded_number:4"),
    ("Use --force to rebuild.", "ungrounded_identifier:--force"),
    ("Plan <|im_end|>", "template_token:<|im_end|>"),
    ("它会显示计划。", "wrong_language:zh"),
    ("Cats purr loudly in the summer sunshine.", "low_overlap"),
    ("x" * 700, "too_long"),
])
def test_grounding_keeps_only_supported_answers(answer, reason):
    source = "Run `pg_tidy --dry-run` to see the plan before rebuilding tables; it needs 2 GB."
    got = check("What does it do?", answer, source, "en", "qa", Limits())
    assert (got is None) if reason is None else got.startswith(reason), got


def test_held_out_groups_are_stable_and_every_post_gets_one():
    rows = [{"group": f"g{i}", "kind": "fact"} for i in range(10)] + [{"group": "r", "kind": "rewrite"}]
    held = hold_out(rows, 0.2, "")
    assert held and held == hold_out(list(reversed(rows)), 0.2, "") and "r" not in held
    assert len(hold_out(rows[:2], 0.0001, "")) == 1, "at least one per post"
    assert hold_out(rows, 0.2, "other salt") != held or len(held) == 1


def test_heldout_questions_never_reach_training_samples(tmp_path):
    result = teach_posts(CHUNKS, TeachSettings(heldout_fraction=0.3))
    assert result["heldout"] and result["samples"]
    for row in result["heldout"]:
        assert set(row) == {"article_id", "title", "heading", "question", "answer", "source", "kind", "lang"}
    held_groups = {(r["article_id"], r["answer"]) for r in result["heldout"]}
    trained = knowledge_samples(result["samples"], max_per_post={"views": None})
    held_q = {r["question"] for r in result["heldout"]}
    for s in trained:
        user, answer = s["messages"][-2]["content"], s["messages"][-1]["content"]
        assert user not in held_q and (s["article_id"], answer) not in held_groups
    assert {r["article_id"] for r in result["heldout"]} == {"2024/a", "2024/b"}


def test_mix_weights_and_caps_per_post():
    rows = teach_posts(CHUNKS, TeachSettings(heldout_fraction=0.0))["samples"]
    assert len(knowledge_samples(rows, {"views": 0})) == 0
    all_ = knowledge_samples(rows, max_per_post={"views": None})
    assert len(knowledge_samples(rows, {"views": 2}, {"views": None})) == 2 * len(all_)
    half = knowledge_samples(rows, {"views": 0.5}, {"views": None})
    assert 0 < len(half) < len(all_) and half == knowledge_samples(rows, {"views": 0.5}, {"views": None})
    capped = knowledge_samples(rows, max_per_post={"views": 3})
    assert len(capped) == 6 and len({s["messages"][-2]["content"] for s in capped}) == 6
    assert all(s["messages"][-1]["role"] == "assistant" for s in capped)


def test_merge_drops_training_questions_equal_to_heldout_ones(tmp_path):
    settings = TeachSettings(heldout_fraction=0.5)
    outs, first_heldout = [], []
    for i, chunks in enumerate((CHUNKS[:2], CHUNKS[2:])):
        out = {k: tmp_path / f"{i}.{k}" for k in ("samples", "heldout", "drops", "counts", "stats")}
        result = teach_posts(chunks, settings)
        if i == 0:
            first_heldout = result["heldout"]
        else:  # the same question asked about another post, trained there
            result["samples"].append({**result["samples"][0], "question": first_heldout[0]["question"]})
        write_outputs(result, out)
        outs.append(out)
    merged = {k: tmp_path / f"m.{k}" for k in ("samples", "heldout", "drops", "counts", "stats")}
    res = merge(outs, merged)
    held_q = {r["question"] for r in read_jsonl(merged["heldout"])}
    assert not held_q & {r["question"] for r in read_jsonl(merged["samples"])}
    assert any(d["reason"] == "same_as_heldout" for d in res["drops"])
    assert json.loads(merged["stats"].read_text())["posts"] == 2


# ---------------------------------------------------------------- teachers and the cache

QA_ANSWER = "Q: What does pg_tidy --dry-run show?\nA: Run it first to see the plan.\nQ: What is a cat?\nA: A purring animal."


def settings() -> TeachSettings:
    return TeachSettings(questions_per_section=2, rewrites=(), heldout_fraction=0.2)


def test_openai_teacher_answers_are_filtered_cached_and_not_asked_again(tmp_path):
    cache = PostCache(tmp_path / "cache")
    with FlakyServer("status500", good=100, answer=QA_ANSWER) as server:
        teacher = OpenAITeacher(server.url, "m", retries=0)
        first = teach_posts(CHUNKS, settings(), teacher, cache)
        n_sections = first["stats"]["requests"]
        assert n_sections == server.requests == 4 and first["stats"]["posts_asked"] == 2
        qa = [r for r in first["samples"] + first["heldout"] if r["kind"] == "qa"]
        assert {r["answer"] for r in qa} == {"Run it first to see the plan."}, "the cat answer is not in the post"
        assert any(d["reason"].startswith("low_overlap") for d in first["drops"])
        again = teach_posts(CHUNKS, settings(), OpenAITeacher(server.url, "m", retries=0), cache)
        assert server.requests == 4 and again["stats"]["posts_cached"] == 2
        assert again["samples"] == first["samples"] and again["heldout"] == first["heldout"]
        # a changed prompt setting or teacher asks again
        teach_posts(CHUNKS, TeachSettings(questions_per_section=3, rewrites=()), OpenAITeacher(server.url, "m"), cache)
        assert server.requests == 8
        teach_posts(CHUNKS, settings(), OpenAITeacher(server.url, "other-model"), cache)
        assert server.requests == 12


def test_api_key_comes_from_the_environment_and_is_never_written(tmp_path, monkeypatch):
    monkeypatch.setenv("BLOGTUNE_TEST_KEY", "sk-secret-123")
    with FlakyServer("status500", good=100, answer=QA_ANSWER) as server:
        teacher = OpenAITeacher(server.url, "m", api_key_env="BLOGTUNE_TEST_KEY")
        out = {k: tmp_path / k for k in ("samples", "heldout", "drops", "counts", "stats")}
        write_outputs(teach_posts(CHUNKS, settings(), teacher, PostCache(tmp_path / "cache")), out)
    for path in [*out.values(), *(tmp_path / "cache").rglob("*.json")]:
        assert "sk-secret" not in path.read_text()
    monkeypatch.delenv("BLOGTUNE_TEST_KEY")
    with pytest.raises(TeachError, match="BLOGTUNE_TEST_KEY is not set"):
        OpenAITeacher("http://127.0.0.1:9/v1", "m", api_key_env="BLOGTUNE_TEST_KEY")


@pytest.mark.parametrize("mode", ["timeout", "status500", "malformed", "disconnect"])
def test_failing_server_names_post_and_endpoint_and_keeps_finished_posts(tmp_path, mode):
    cache = PostCache(tmp_path / "cache")
    # post 2024/a has 3 sections worth asking about, 2024/b one: the 4th request fails
    with FlakyServer(mode, good=3, answer=QA_ANSWER, sleep_s=3) as server:
        teacher = OpenAITeacher(server.url, "m", concurrency=1, timeout_s=1, retries=1)
        out = {k: tmp_path / k for k in ("samples", "heldout", "drops", "counts", "stats")}
        train = tmp_path / "train.jsonl"
        train.write_text("".join(json.dumps(c) + "\n" for c in CHUNKS))
        with pytest.raises(TeachError) as err:
            teach_shard(train, 0, 1, settings(), teacher, cache, out)
        assert "post 2024/b" in str(err.value) and server.url in str(err.value)
        assert not out["samples"].exists(), "no half-written output"
        assert len(list(cache.root.rglob("*.json"))) == 1, "the finished post is cached"
        asked = server.requests
        assert asked >= 4
        server.good = 10**6  # the endpoint recovers: only the unfinished post is asked
        result = teach_shard(train, 0, 1, settings(), OpenAITeacher(server.url, "m", timeout_s=5), cache, out)
        assert result["stats"]["posts_cached"] == 1 and result["stats"]["requests"] == 1
        assert server.requests == asked + 1 and out["samples"].exists()


def test_local_teacher_generates_in_batches_on_a_tiny_model(tmp_path, tiny_llama):
    teacher = LocalTeacher(str(tiny_llama), "tiny", batch_size=3, max_tokens=6)
    cache = PostCache(tmp_path / "cache")
    result = teach_posts(CHUNKS, settings(), teacher, cache)
    assert result["stats"]["requests"] == 4 and result["stats"]["output_tokens"] > 0
    assert result["stats"]["teacher"]["model"] == "tiny"
    # random weights write no parsable pairs: every answer is dropped, with its reason
    assert any(d["reason"] == "unparsed" for d in result["drops"])
    again = LocalTeacher(str(tiny_llama), "tiny", batch_size=3, max_tokens=6)
    assert teach_posts(CHUNKS, settings(), again, cache)["stats"]["requests"] == 0
