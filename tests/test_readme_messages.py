"""Every message the README's troubleshooting table quotes is one the code really prints (issue 13
item 13): each is produced here by the code path that raises it, and the README's text (with `…`
for the variable part) must match it.

Preflight errors reach the user as `blogtune: <message>` (rules/common.smk adds the prefix)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from blogtune.testing import REPO, deep_merge

README_ROW = re.compile(r"^\|\s*`([^`]+)`(?:\s*\([^)]*\))?\s*\|", re.M)


def quoted_messages() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    table = text.split("## Troubleshooting", 1)[1].split("\n## ", 1)[0]
    return README_ROW.findall(table)


def pattern(quoted: str) -> re.Pattern:
    """README text -> regex: `…` is any text, `N` a number, 'x' / 'org/name' any quoted name."""
    out = re.escape(quoted).replace(r"\ …", "…").replace(r"…\ ", "…")  # `…` may stand for punctuation too
    out = out.replace("…", ".*").replace(r"~N", r"~[\d.]+")
    out = re.sub(r"'(x|org/name)'", "'[^']+'", out)
    return re.compile(out, re.S)


def config(blog: Path, **overrides) -> dict:
    from snakemake.utils import validate

    cfg = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    cfg = deep_merge(cfg, {**overrides, "blog": {**overrides.get("blog", {}), "dir": str(blog)}})
    validate(cfg, str(REPO / "schemas/config.schema.yaml"), set_default=True)
    return cfg


def local_model(path: Path, weights: str = "model.safetensors", **cfg) -> str:
    path.mkdir(parents=True)
    base = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000}
    (path / "config.json").write_text(json.dumps({**base, **cfg}))
    (path / weights).write_bytes(b"\0" * 16)
    return str(path)


@pytest.fixture
def printed(tmp_path, monkeypatch, smollm2_tok_dir) -> list[str]:
    """The messages the code prints for each failure the README lists."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    from blogtune.export.gguf.vocab import detect_pre
    from blogtune.preflight import PreflightError, run_preflight

    blog = tmp_path / "blog"
    (blog / "2024").mkdir(parents=True)
    for i in range(2):
        (blog / "2024" / f"p{i}.md").write_text(f"# Post {i}\n\nText {i}.\n", encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    out: list[str] = []

    def preflight(**overrides) -> None:
        blog_dir = overrides.pop("blog_dir", blog)
        with pytest.raises(PreflightError) as err:
            run_preflight(config(blog_dir, **overrides), work)
        out.append(f"blogtune: {err.value}")

    preflight(blog_dir=tmp_path / "nope")
    one = tmp_path / "one"
    (one / "2024").mkdir(parents=True)
    (one / "2024" / "a.md").write_text("# A\n\ntext\n", encoding="utf-8")
    preflight(blog_dir=one)
    bad = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    bad["train"]["rnak"] = 8
    with pytest.raises(WorkflowError) as err:
        validate(bad, str(REPO / "schemas/config.schema.yaml"), set_default=True)
    out.append(str(err.value))
    preflight(split={"fractions": {"train": 0.5, "valid": 0.1, "test": 0.1}})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    preflight(base_model="acme/never-cached-model")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    preflight(base_model=local_model(tmp_path / "pickled", weights="pytorch_model.bin"))
    preflight(base_model=local_model(tmp_path / "neox", model_type="gpt_neox"))
    preflight(base_model=local_model(tmp_path / "huge", hidden_size=8192, intermediate_size=28672,
                                     num_hidden_layers=800, num_attention_heads=64, num_key_value_heads=8))
    wrong = Path(local_model(tmp_path / "wrong_eos"))
    (wrong / "tokenizer_config.json").write_text(json.dumps({
        "eos_token": "<|endoftext|>",
        "chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}",
        "added_tokens_decoder": {"0": {"content": "<|endoftext|>"}, "2": {"content": "<|im_end|>"}},
    }))
    preflight(base_model=str(wrong))
    preflight(trust_remote_code=True)
    # The Hub itself: nothing listens on this port.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    code = ("from blogtune.model.model_checks import hub_model_folder\n"
            "try:\n    hub_model_folder('acme/unreachable')\nexcept Exception as e:\n    print('blogtune:', e)\n")
    out.append(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                              env={**os.environ, "HF_HOME": str(tmp_path / "hf")}).stdout)
    from blogtune.export.gguf import ExportError

    class Odd:  # a tokenizer whose probe hash no table knows
        def encode(self, text):
            return [len(text), 7]

    with pytest.raises(ExportError) as err:
        detect_pre(Odd(), "llama", 1000)
    out.append(str(err.value))
    # The ollama rule's log line when no server answers (port 9: nothing listens).
    call = (f"import runpy; runpy.run_path('scripts/ollama_create.py')['run']({str(tmp_path / 'm.gguf')!r}, "
            f"{str(smollm2_tok_dir)!r}, {str(tmp_path / 'r.json')!r}, 'http://127.0.0.1:9', 't')")
    proc = subprocess.run(
        [sys.executable, "-c", call],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    out.append(proc.stderr)
    return out


def test_readme_quotes_messages_the_code_prints(printed):
    quoted = [q for q in quoted_messages() if not q.endswith(".tsv")]
    assert len(quoted) >= 12, quoted
    missing = [q for q in quoted if not any(pattern(q).search(msg) for msg in printed)]
    assert not missing, "README quotes messages the code never prints:\n" + "\n".join(missing) + (
        "\n\nprinted:\n" + "\n".join(printed)
    )
