"""Exam items: spans, distractors, determinism, QA rows, no leakage into training; answer matching; intervals."""

from __future__ import annotations

import pytest

from blogtune.exam import answers, items, stats
from blogtune.io_utils import read_jsonl
from blogtune.testing import REPO, run_snakemake, write_config


def _chunk(aid: str, title: str, text: str, heading: str = "Intro") -> dict:
    return {"article_id": aid, "title": title, "heading_path": [heading], "part": 1, "parts": 1, "text": text}


BLOG = {
    "train": [
        _chunk("p1", "Bloat", "## Fixing it\n\nRun pg_tidy with `--lock-timeout 2s` on the orders table. It shrank orders from 182 GB to 64 GB in 47 minutes.\n\n```sql\nSELECT 99999;\n```\n"),
        _chunk("p2", "Upgrades", "We moved from PostgreSQL 15.4 to 16.2 using `pg_upgrade --link` last spring. The cluster had 12 databases and about 3,500 tables."),
        _chunk("p3", "Search", "A GIN index on the tsvector column makes `websearch_to_tsquery` fast on 5 million rows. Set `--report json` for machine output, or use `--dry-run` first."),
        _chunk("p4", "Replicas", "Streaming replication with 3 standbys kept lag under 20 ms on NVMe disks. We raised wal_keep_size to 2048 after version 13.1 arrived."),
    ],
    "test": [_chunk("p5", "Locks", "Use lock_timeout of 500 ms and retry up to 7 times before you give up on the ALTER.")],
}


def test_spans_by_kind():
    got = {(s.kind, s.text) for s in items.find_spans("Run `pg_tidy --dry-run` with --min-bloat 30 on PostgreSQL 16.2, wal_keep_size and 3,500 tables; `relpages` is read.")}
    assert ("command", "pg_tidy --dry-run") in got
    assert ("flag", "--min-bloat") in got and ("number", "30") in got and ("number", "3,500") in got
    assert ("version", "16.2") in got and ("name", "PostgreSQL") in got
    assert ("identifier", "wal_keep_size") in got and ("identifier", "relpages") in got
    assert not [s for s in items.find_spans("The table is big. This works.") if s.kind == "name"]


def test_code_blocks_are_not_exam_material():
    sentences = [s for _, s in items.prose_sentences(BLOG["train"][0]["text"], "x")]
    assert not any("99999" in s for s in sentences)
    assert all(h == "Fixing it" for h, _ in items.prose_sentences(BLOG["train"][0]["text"], "x"))


def test_cloze_items_distractors_and_determinism():
    built = items.build_cloze_items(BLOG, seed=3, max_items=50, max_per_article=4)
    assert built and {it.split for it in built} == {"train", "test"}
    for it in built:
        assert len(it.options) == 4 and len(set(map(str.lower, it.options))) == 4
        assert it.options[it.answer_index] == it.answer
        assert items.BLANK in it.question and it.answer in it.sentence
        assert it.answer not in it.question  # blanked out, not shown elsewhere
        kind = it.kind.split(":")[1]
        for d in it.options:
            if d != it.answer:
                assert d.lower() not in it.sentence.lower()
                spans = [s for ch in BLOG["train"] + BLOG["test"] if ch["article_id"] != it.article_id for _, s in items.prose_sentences(ch["text"], "") for s in [s] if d in s]
                assert spans, f"distractor {d!r} must come from another post"
                assert any(sp.kind == kind and sp.text == d for s in spans for sp in items.find_spans(s))
    again = items.build_cloze_items(BLOG, seed=3, max_items=50, max_per_article=4)
    assert [i.to_dict() for i in again] == [i.to_dict() for i in built]
    other = items.build_cloze_items(BLOG, seed=4, max_items=50, max_per_article=4)
    assert [i.options for i in other] != [i.options for i in built]
    assert len(items.build_cloze_items(BLOG, seed=3, max_items=3)) == 3


def test_qa_items_from_heldout_rows():
    rows = [{"article_id": "p1", "title": "Bloat", "heading": "Fixing it", "question": "What does pg_tidy use to bound lock waits?", "answer": "--lock-timeout", "source": "teacher", "kind": "fact", "lang": "en"},
            {"article_id": "p5", "question": "How many retries?", "answer": "7", "source": "view", "kind": "number"}]
    qa = items.qa_items(rows, {"p1": "train", "p5": "test"})
    assert [(q.kind, q.source, q.split) for q in qa] == [("qa:fact", "teacher", "train"), ("qa:number", "view", "test")]
    with pytest.raises(ValueError, match="line 1: missing answer"):
        items.qa_items([{"article_id": "p1", "question": "q"}], {})


def test_leakage_check_finds_a_trained_question():
    built = items.build_cloze_items(BLOG, seed=0)
    texts = [t for ch in BLOG["train"] for t in (ch["text"], f'Write part 1 of 1 of my blog post "{ch["title"]}".')]
    assert items.leaked_questions(built, texts) == []
    planted = [*texts, "noise " + built[0].question.replace("\n", "  \n") + " more"]
    assert items.leaked_questions(built, planted) == [built[0].item_id]


def test_answer_matching():
    assert answers.exact_match("The `--lock-timeout`.", "--lock-timeout")
    assert answers.exact_match("  PostgreSQL 16.2 ", "postgresql 16.2")
    assert not answers.exact_match("16.3", "16.2")
    assert answers.token_f1("182 GB table", "182 GB") == pytest.approx(0.8)
    assert answers.token_f1("膨胀率", "膨胀") == pytest.approx(0.8)  # CJK: one token per character
    assert answers.abstains("I don't know.") and answers.abstains("我不知道。") and not answers.abstains("64 GB")
    assert answers.has_loop([1, 2, 3, 4] * 3) and not answers.has_loop(list(range(40)))


def test_intervals():
    lo, hi = stats.wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert stats.wilson(0, 0) == (None, None)
    lift = stats.paired_lift([0] * 50 + [1] * 50, [1] * 80 + [0] * 20)
    assert lift["lift"] == pytest.approx(0.3) and lift["ci"][0] > 0
    none = stats.paired_lift([0, 1] * 50, [1, 0] * 50)
    assert none["ci"][0] < 0 < none["ci"][1]


def test_rates_per_language():
    rows = [{"lang": "en", "ok": True}] * 3 + [{"lang": "zh", "ok": False}, {"lang": "zh", "ok": True}, {"ok": True}]
    got = stats.by_lang(rows, lambda rs: stats.rate([r["ok"] for r in rs]))
    assert list(got) == ["?", "en", "zh"]  # an item without a language is counted, not dropped
    assert (got["en"]["k"], got["en"]["n"]) == (3, 3) and (got["zh"]["k"], got["zh"]["n"]) == (1, 2)


def test_exam_items_rule_reads_the_teach_stage_heldout_questions(tmp_path):
    blog = tmp_path / "blog"
    blog.mkdir()
    src = sorted((REPO / "sample_blog").rglob("2024*.md"))[:12]
    for f in src:
        (blog / f.name).write_text(f.read_text(encoding="utf-8"), encoding="utf-8")
    write_config(tmp_path, {"blog": {"dir": str(blog)}, "exam": {"max_items": 40}})
    run_snakemake(tmp_path, "results/data/exam/items.jsonl", cores=1)
    built = list(read_jsonl(tmp_path / "results/data/exam/items.jsonl"))
    cloze = [b for b in built if b["source"] == "cloze"]
    qa = [b for b in built if b["source"] != "cloze"]
    assert cloze and len(cloze) <= 40
    # The teach stage's held-out questions (teacher-free views here) become short-answer items.
    heldout = list(read_jsonl(tmp_path / "results/data/teach/heldout.jsonl"))
    assert qa and {b["question"] for b in qa} <= {h["question"] for h in heldout}
    # No question appears in any training sample: chunk samples as format writes them, and the
    # teach stage's knowledge samples.
    import yaml

    from blogtune.model.formatting import chat_sample

    prompts = yaml.safe_load((tmp_path / "config.yaml").read_text())["format"]["prompts"]
    samples = [chat_sample(c, prompts, None) for c in read_jsonl(tmp_path / "results/data/split/train.jsonl")]
    samples += [{"messages": [{"content": r["question"]}, {"content": r["answer"]}]}
                for r in read_jsonl(tmp_path / "results/data/teach/samples.jsonl")]
    assert items.leaked_questions(built, [t for smp in samples for t in items.sample_texts(smp)]) == []
