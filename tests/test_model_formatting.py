"""Formatting chunks into chat samples that end at the model's end-of-turn token."""

import json

import pytest

from blogtune.model.formatting import (
    DEFAULT_PROMPTS,
    FormatError,
    format_split,
    language_of,
    user_prompt,
    validate_prompts,
)


def chunk(text="Some body text.", title="VACUUM notes", heading=("Background",), part=1, parts=2):
    return {"article_id": "202401/20240105_01", "title": title, "heading_path": list(heading),
            "part": part, "parts": parts, "text": text}


def test_language_detection():
    assert language_of("这是一篇关于数据库的文章") == "zh"
    assert language_of("An English post about databases") == "default"


def test_user_prompt_fills_fields_and_picks_language():
    en = user_prompt(chunk(), DEFAULT_PROMPTS)
    assert "VACUUM notes" in en and "part 1 of 2" in en and "Background" in en
    zh = user_prompt(chunk(text="索引膨胀的原理", title="索引膨胀", heading=("原理",)), DEFAULT_PROMPTS)
    assert zh.startswith("请写出") and "《索引膨胀》" in zh


def test_heading_falls_back_to_title():
    assert '"VACUUM notes"' in user_prompt(chunk(heading=()), {"default": '"{heading}"'})


def test_unknown_placeholder_names_the_key():
    with pytest.raises(FormatError, match=r"format.prompts.default.*\['titel'\]"):
        validate_prompts({"default": "Write {titel}"})
    with pytest.raises(FormatError, match="default"):
        validate_prompts({"zh": "{title}"})


def test_chat_samples_end_with_end_of_turn(tmp_path, smollm2_tokenizer_obj):
    out = tmp_path / "train.jsonl"
    stats = format_split([chunk(), chunk(part=2, text="```sql\nselect 1;\n```")], out,
                         smollm2_tokenizer_obj, "chat", None, "You are my blog.")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert stats.samples == 2 and stats.ending_at_eot == 2
    assert rows[0]["messages"][0] == {"role": "system", "content": "You are my blog."}
    assert rows[0]["messages"][-1] == {"role": "assistant", "content": "Some body text."}
    assert rows[1]["article_id"] == "202401/20240105_01" and rows[1]["part"] == 2
    rendered = smollm2_tokenizer_obj.apply_chat_template(rows[0]["messages"], tokenize=False)
    assert rendered.rstrip().endswith("<|im_end|>")
    assert max(stats.tokens) > 10


def test_text_style_for_base_models(tmp_path, smollm2_tokenizer_obj):
    out = tmp_path / "train.jsonl"
    format_split([chunk()], out, smollm2_tokenizer_obj, "text")
    row = json.loads(out.read_text())
    assert row["text"].startswith("# VACUUM notes") and "messages" not in row


def test_chat_without_template_is_a_clear_error(tmp_path, smollm2_tokenizer_obj):
    import copy

    tok = copy.deepcopy(smollm2_tokenizer_obj)
    tok.chat_template = None
    with pytest.raises(FormatError, match="format.style"):
        format_split([chunk()], tmp_path / "x.jsonl", tok, "chat")
    assert not (tmp_path / "x.jsonl").exists()


# ---- cutting samples that exceed max_seq_length ----------------------------------------------

LONG_ZH = "\n\n".join(
    f"## 第{i}节\n\n" + "PostgreSQL 的 MVCC 设计让每次更新都留下旧版本，VACUUM 负责回收这些死元组。" * 6 for i in range(6)
)
# One line of code: the chunker cuts a too-long code block between lines, never inside one.
LONG_CODE = "```sql\nselect " + ", ".join(f"col_{i}" for i in range(300)) + " from t;\n```\n"


def test_over_long_chunks_are_cut_to_fit_and_renumbered(tmp_path, smollm2_tokenizer_obj):
    """A chunk longer than max_seq_length tokens is cut into pieces that fit; all of its text is
    kept (pieces joined give it back), every sample ends at end-of-turn, parts are renumbered."""
    from blogtune.model.formatting import chat_sample, check_sample

    long_chunk = chunk(text=LONG_ZH, title="VACUUM 原理", heading=("原理",), part=1, parts=2)
    tail = chunk(text="Short closing words.", part=2, parts=2)
    untouched = {**chunk(text="Another post."), "article_id": "202402/20240201_01", "parts": 1}
    before = check_sample(chat_sample(long_chunk, DEFAULT_PROMPTS, None), smollm2_tokenizer_obj, "chat")[0]
    assert before > 400  # the test is only meaningful if the chunk really is too long

    out = tmp_path / "train.jsonl"
    stats = format_split([long_chunk, tail, untouched], out, smollm2_tokenizer_obj, "chat", max_seq_length=200)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    first = [r for r in rows if r["article_id"] == long_chunk["article_id"]]
    assert len(first) >= 3 and stats.chunks_cut_to_fit == 1 and stats.over_max_seq_length == 0
    assert max(stats.tokens) <= 200 and stats.ending_at_eot == stats.samples == len(rows)
    assert "".join(r["messages"][-1]["content"] for r in first[:-1]) == LONG_ZH
    assert first[-1]["messages"][-1]["content"] == "Short closing words."
    assert [(r["part"], r["parts"]) for r in first] == [(k, len(first)) for k in range(1, len(first) + 1)]
    assert f"第 2/{len(first)} 部分" in first[1]["messages"][0]["content"]  # the prompt says the new numbers
    assert first[1]["heading"].startswith("原理 > 第")  # the chunk's path, then the headings inside it
    assert [r for r in rows if r["article_id"] == untouched["article_id"]][0]["parts"] == 1


def test_uncuttable_code_line_is_counted_not_cut(tmp_path, smollm2_tokenizer_obj):
    out = tmp_path / "train.jsonl"
    stats = format_split([chunk(text=LONG_CODE, parts=1)], out, smollm2_tokenizer_obj, "chat", max_seq_length=200)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert any("select col_0, col_1" in r["messages"][-1]["content"] and " from t;" in r["messages"][-1]["content"]
               for r in rows)  # the line stayed whole
    assert "".join(r["messages"][-1]["content"] for r in rows) == LONG_CODE
    assert stats.over_max_seq_length == 1 and max(stats.tokens) > 200


def test_without_a_limit_nothing_is_cut(tmp_path, smollm2_tokenizer_obj):
    stats = format_split([chunk(text=LONG_ZH)], tmp_path / "t.jsonl", smollm2_tokenizer_obj, "chat")
    assert stats.samples == 1 and stats.chunks_cut_to_fit == 0


def test_merge_heading_paths():
    from blogtune.model.formatting import merge_heading_paths

    assert merge_heading_paths(["A", "B"], ["B", "C"]) == ["A", "B", "C"]
    assert merge_heading_paths(["A", "B"], []) == ["A", "B"]
    assert merge_heading_paths(["A"], ["X"]) == ["A", "X"]
    assert merge_heading_paths([], ["X"]) == ["X"]


def test_no_cutting_when_pieces_would_be_mostly_prompt(tmp_path, smollm2_tokenizer_obj):
    from blogtune.model.formatting import FIT_MARGIN, chat_sample, check_sample

    prompt_only = check_sample(chat_sample(chunk(text=""), DEFAULT_PROMPTS, None), smollm2_tokenizer_obj, "chat")[0]
    limit = prompt_only + FIT_MARGIN + 5  # room for 5 tokens of text per piece: not worth cutting
    stats = format_split([chunk(text=LONG_ZH)], tmp_path / "t.jsonl", smollm2_tokenizer_obj, "chat",
                         max_seq_length=limit)
    assert stats.samples == 1 and stats.over_max_seq_length == 1
