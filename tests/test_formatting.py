"""Formatting chunks into chat samples that end at the model's end-of-turn token."""

import json

import pytest

from blogtune.formatting import (
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
