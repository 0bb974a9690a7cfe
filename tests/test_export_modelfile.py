"""Modelfile writing, read back with a parser that follows Ollama's grammar (parser/parser.go):

- instruction name, whitespace, value; `#` lines are comments; names are case-insensitive;
- a value ends at the first newline where the text so far, trimmed, is a complete value:
  unquoted, "…" or \"\"\"…\"\"\" (no escape sequences);
- only printable runes are kept (plus newline / tab / CR inside a quoted value).
"""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blogtune.export.modelfile import (
    ModelfileError,
    build_modelfile,
    ollama_parameters,
    quote_value,
    write_modelfile,
)
from blogtune.model.chat_format import detect_family

_SPACE = " \t"
_NEWLINE = "\r\n"
_TRIM = " \t\n\v\f\r\x85\xa0"


def _printable(ch: str) -> bool:
    return ch == " " or unicodedata.category(ch)[0] in "LMNPS"


def _unquote(s: str) -> tuple[str, bool]:
    if s[:3] == '"""':
        return (s[3:-3], True) if len(s) >= 6 and s[-3:] == '"""' else ("", False)
    if s[:1] == '"':
        return (s[1:-1], True) if len(s) >= 2 and s[-1] == '"' else ("", False)
    return s, True


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """[(command, value)]; PARAMETER gives ("parameter:<name>", value). Raises ValueError like Ollama."""
    commands: list[tuple[str, str]] = []
    state, buf, name = "nil", "", ""
    for ch in text:
        if state == "nil":
            if ch == "#":
                state = "comment"
            elif ch in _SPACE or ch in _NEWLINE:
                pass
            else:
                state, buf = "name", ch
            continue
        if state == "comment":
            if ch in _NEWLINE:
                state = "nil"
            continue
        if state == "name":
            if ch.isascii() and ch.isalpha():
                buf += ch
            elif ch in _SPACE:
                name = buf.lower()
                if name not in {
                    "from",
                    "license",
                    "template",
                    "system",
                    "adapter",
                    "draft",
                    "renderer",
                    "parser",
                    "parameter",
                    "message",
                    "requires",
                }:
                    raise ValueError(f"invalid command {buf!r}")
                state, buf = ("param" if name == "parameter" else "value"), ""
            else:
                raise ValueError("invalid command")
            continue
        if state == "param":
            if (ch.isascii() and ch.isalnum()) or ch == "_":
                buf += ch
            elif ch in _SPACE:
                name, state, buf = f"parameter:{buf}", "value", ""
            else:
                raise ValueError("bad parameter name")
            continue
        # state == "value"
        if ch in _NEWLINE or ch in _SPACE:
            value, ok = _unquote(buf.strip(_TRIM))
            if not ok or ch in _SPACE:
                buf += ch
                continue
            commands.append((name, value))
            state, buf = "nil", ""
            continue
        if _printable(ch):
            buf += ch
    if state == "value":
        value, ok = _unquote(buf.strip(_TRIM))
        if not ok:
            raise ValueError("unexpected EOF")
        commands.append((name, value))
    elif state not in ("nil", "comment"):
        raise ValueError("unexpected EOF")
    if not any(c == "from" for c, _ in commands):
        raise ValueError("no FROM line")
    return commands


@pytest.fixture(scope="module")
def chatml(smollm2_tokenizer_obj):
    return detect_family(smollm2_tokenizer_obj)


def test_modelfile_round_trip(chatml):
    params = {"temperature": 0.7, "top_p": 0.9, "num_ctx": 2048, "repeat_penalty": 1.1}
    text = build_modelfile(
        "blog.gguf", chatml, 'You are my blog.\nAnswer in "my" voice.', params, comment="made by blogtune"
    )
    cmds = parse_modelfile(text)
    assert cmds[0] == ("from", "./blog.gguf")
    assert dict(cmds)["template"] == chatml.ollama_template()
    assert [v for c, v in cmds if c == "parameter:stop"] == ["<|im_end|>", "<|im_start|>", "<|endoftext|>"]
    assert dict(cmds)["parameter:num_ctx"] == "2048"
    assert float(dict(cmds)["parameter:temperature"]) == 0.7
    assert dict(cmds)["system"] == 'You are my blog.\nAnswer in "my" voice.'
    assert text.startswith("# made by blogtune\nFROM ./blog.gguf\n")


def test_default_system_prompt_is_written_when_none_given(chatml):
    cmds = dict(parse_modelfile(build_modelfile("m.gguf", chatml, None, {})))
    assert cmds["system"] == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.mark.parametrize(
    "system",
    [
        'He said "hi" then left',
        'ends with a quote"',
        '"starts with quotes',
        '""double at start',
        "multi\nline\n\nwith blank",
        "  leading and trailing spaces  ",
        "template-like {{ .System }} and {{ end }}",
        'inner """triple""" quotes mid-line',
        "tabs\tinside\tit",
        "中文系统提示，带标点。",
        "emoji 🚀 and ü",
        "trailing newline\n",
        "#not a comment",
        'ends with triple """',  # carried in single quotes
    ],
)
def test_adversarial_values_survive(chatml, system):
    text = build_modelfile("m.gguf", chatml, system, {})
    assert dict(parse_modelfile(text))["system"] == system


@pytest.mark.parametrize(
    "system, why",
    [
        ('line one ends with """\nline two', "ends with"),
        ('a line ending in "\nand one in """\nend', "ends with"),
        ("control \x07 bell", "U+0007"),
        ("zero width\u200bspace", "U+200B"),
        ("nbsp\u00a0here", "U+00A0"),
    ],
)
def test_values_that_cannot_be_carried_raise(chatml, system, why, tmp_path):
    with pytest.raises(ModelfileError, match="system_prompt") as err:
        write_modelfile(tmp_path / "Modelfile", "m.gguf", chatml, system, {})
    assert why in str(err.value)
    assert not (tmp_path / "Modelfile").exists()  # never a broken file


def test_stops_with_quotes_and_spaces(chatml):
    params = {"stop": ['say "x" now', '"quoted"', "a b", "</s>"]}
    cmds = parse_modelfile(build_modelfile("m.gguf", chatml, None, params))
    stops = [v for c, v in cmds if c == "parameter:stop"]
    assert stops == ["<|im_end|>", "<|im_start|>", "<|endoftext|>", 'say "x" now', '"quoted"', "a b", "</s>"]


def test_bad_parameters_name_the_key(chatml):
    with pytest.raises(ModelfileError, match=r"modelfile.parameters.temprature"):
        build_modelfile("m.gguf", chatml, None, {"temprature": 0.7})
    with pytest.raises(ModelfileError, match=r"modelfile.parameters.num_ctx"):
        build_modelfile("m.gguf", chatml, None, {"num_ctx": 2048.5})
    with pytest.raises(ModelfileError, match=r"modelfile.parameters.top_p"):
        build_modelfile("m.gguf", chatml, None, {"top_p": "high"})
    with pytest.raises(ModelfileError, match=r"modelfile.template"):
        build_modelfile("m.gguf", chatml, None, {}, template='{{ .Prompt }} """\n')


def test_template_override_is_used(chatml):
    tmpl = "{{ range .Messages }}{{ .Role }}: {{ .Content }}\n{{ end }}assistant:"
    cmds = dict(parse_modelfile(build_modelfile("m.gguf", chatml, "s", {}, template=tmpl)))
    assert cmds["template"] == tmpl


def test_api_parameters_match_modelfile(chatml):
    params = ollama_parameters(chatml, {"temperature": 0.2, "stop": ["END"], "num_ctx": 4096})
    assert params == {
        "temperature": 0.2,
        "num_ctx": 4096,
        "stop": ["<|im_end|>", "<|im_start|>", "<|endoftext|>", "END"],
    }


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=80))
def test_any_value_round_trips_or_raises(value):
    """Property: quote_value either raises ModelfileError or Ollama's grammar reads back the value."""
    try:
        quoted = quote_value(value, "system_prompt")
    except ModelfileError:
        return
    cmds = parse_modelfile(f"FROM ./m.gguf\nSYSTEM {quoted}\n")
    assert dict(cmds)["system"] == value


def test_scripts_export_and_modelfile_standalone(tiny_llama, tmp_path):
    """scripts/export_gguf.py and scripts/modelfile.py run by hand: the job config.yaml describes."""
    import os
    import shutil
    import subprocess
    import sys

    from blogtune.testing import REPO, write_config

    write_config(
        tmp_path,
        {
            "blog": {"dir": str(REPO / "sample_blog")},
            "export": {"gguf_type": "q8_0", "name": "blog"},
            "system_prompt": "I am the blog.",
            "modelfile": {"parameters": {"temperature": 0.7, "num_ctx": 2048}},
        },
    )
    shutil.copytree(tiny_llama, tmp_path / "results/smollm2-135m-instruct/fused")  # what `fuse` writes
    gguf_path = tmp_path / "results/smollm2-135m-instruct/gguf/blog.gguf"
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def run(script):
        return subprocess.run(
            [sys.executable, str(REPO / "scripts" / script)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )

    proc = run("export_gguf.py")
    assert proc.returncode == 0, proc.stderr
    assert gguf_path.stat().st_size > 0 and "pre-tokenizer smollm" in proc.stderr
    modelfile = gguf_path.parent / "Modelfile"
    proc = run("modelfile.py")
    assert proc.returncode == 0, proc.stderr
    cmds = dict(parse_modelfile(modelfile.read_text(encoding="utf-8")))
    assert cmds["from"] == "./blog.gguf" and cmds["system"] == "I am the blog."
    assert (modelfile.parent / cmds["from"]).resolve() == gguf_path.resolve()
