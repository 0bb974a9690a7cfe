"""One chat format for training and serving.

A `ChatFamily` holds the literal strings around each role, the generation prompt, BOS handling
and the stop list for one model. `render()` produces training text in Python; `ollama_template()`
writes the same structure as an Ollama Go template; the stop list feeds `PARAMETER stop`.

Detection (`detect_family`) recognises the family from the tokenizer's chat template and special
tokens, then *probes* the HF template with sentinel messages to pick up per-model details
(SmolLM2's default system prompt, Llama 3.1's date preamble, Qwen3's empty think block, Phi-3's
trailing EOS) and finally checks that `render()` reproduces `apply_chat_template` on several
conversation shapes. A template we cannot reproduce is an error, never a silent mismatch between
what the model was trained on and what Ollama feeds it (users' pain points 1-3).

Over 400 lines on purpose: the family table, detection and the render/template pair must change
together (one family's strings in one place), so they stay in one file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Message = dict[str, str]
ROLES = ("system", "user", "assistant")
_PROBE_S, _PROBE_U, _PROBE_A = "SYSPROBE", "USERPROBE", "ASSISTANTPROBE"


class ChatFormatError(ValueError):
    """The chat format cannot be determined or reproduced; the message says what to set."""


@dataclass(frozen=True)
class ChatFamily:
    name: str  # chatml | llama3 | mistral | gemma | phi3 | custom
    prefix: dict[str, str]  # role -> text before the content
    suffix: dict[str, str]  # role -> text after the content
    generation_prompt: str  # assistant header the model continues from
    stops: tuple[str, ...] = ()
    bos: str = ""  # text the template itself writes first (e.g. "<|begin_of_text|>")
    eos: str = ""
    system_mode: str = "turn"  # turn | first_user (Gemma) | last_user (Mistral)
    system_joiner: str = "\n\n"  # system + joiner + user text, for the merged modes
    default_system: str | None = None  # injected by the template when no system message is given
    system_preamble: str = ""  # written before every system text (Llama 3.1 date lines)
    system_always: bool = False  # a system turn appears even without system text
    trim: frozenset[str] = frozenset()  # roles whose content the template strips
    think_prefix: str = ""  # Qwen3: empty think block on the answer to the last user turn
    closing: str = ""  # written at the very end when there is no generation prompt (Phi-3 EOS)
    template_override: str | None = None  # a user-supplied Ollama template replaces ours
    fallback_render: Callable[..., str] | None = field(default=None, compare=False, repr=False)

    # -- Python rendering (training) ------------------------------------------------------

    def render(
        self,
        messages: Sequence[Message],
        add_generation_prompt: bool = False,
        enable_thinking: bool | None = None,
    ) -> str:
        """The exact text the model's own chat template produces for `messages`.

        `enable_thinking=False` adds Qwen3's empty think block to the generation prompt (what
        serving uses, matching the training answers); None/True mirror HF's default.
        """
        if self.name == "custom":
            if self.fallback_render is None:
                raise ChatFormatError("custom chat family without a Python renderer (no HF chat template)")
            return self.fallback_render(messages, add_generation_prompt)
        msgs = [dict(m) for m in messages]
        for m in msgs:
            if m.get("role") not in ROLES:
                raise ChatFormatError(f"unsupported message role {m.get('role')!r}; use one of {ROLES}")
        out = [self.bos]
        system: str | None = None
        if self.system_mode != "turn" and msgs and msgs[0]["role"] == "system":
            system = msgs.pop(0)["content"]
        if self.system_mode == "turn":
            first_is_system = bool(msgs) and msgs[0]["role"] == "system"
            if not first_is_system and (self.default_system is not None or self.system_always):
                out.append(self._wrap("system", self.default_system or ""))
        last_user = max((i for i, m in enumerate(msgs) if m["role"] == "user"), default=-1)
        first_user = next((i for i, m in enumerate(msgs) if m["role"] == "user"), -1)
        for i, m in enumerate(msgs):
            role, content = m["role"], m["content"]
            if role == "system":
                out.append(self._wrap("system", content))
                continue
            if role in self.trim:
                content = content.strip()
            if role == "user" and system is not None:
                if (self.system_mode == "first_user" and i == first_user) or (
                    self.system_mode == "last_user" and i == last_user and i == len(msgs) - 1
                ):
                    content = system + self.system_joiner + content
            if role == "assistant" and self.think_prefix and i > last_user:
                content = self.think_prefix + content.lstrip("\n")
            out.append(self.prefix[role] + content + self.suffix[role])
        if add_generation_prompt:
            out.append(self.generation_prompt)
            if enable_thinking is False and self.think_prefix:
                out.append(self.think_prefix)
        else:
            out.append(self.closing)
        return "".join(out)

    def _wrap(self, role: str, content: str) -> str:
        preamble = self.system_preamble if role == "system" else ""
        return self.prefix[role] + preamble + content + self.suffix[role]

    @property
    def serving_generation_prompt(self) -> str:
        """What Ollama should end the prompt with: the answer header the training samples used."""
        return self.generation_prompt + self.think_prefix

    # -- Ollama (serving) -----------------------------------------------------------------

    def ollama_template(self) -> str:
        """A Go text/template over `.Messages` that renders like `render(..., True, False)`.

        BOS is left out: llama.cpp adds it from the GGUF's add_bos_token flag. System text comes
        through the message list (the Modelfile SYSTEM becomes a system message in Ollama).
        """
        if self.template_override is not None:
            return self.template_override
        if self.name == "custom":
            raise ChatFormatError("custom chat family needs a template override")
        lit = _go_literal
        parts: list[str] = []
        if self.system_always and self.system_mode == "turn":
            parts.append("{{ if not .System }}" + lit(self._wrap("system", "")) + "{{ end }}")
        sys_in_user = self.system_mode in ("first_user", "last_user")
        if self.system_mode == "first_user":
            parts.append("{{ $merged := false }}")
        parts.append("{{ range $i, $m := .Messages }}")
        branches = []
        if not sys_in_user:
            branches.append(
                (
                    'eq .Role "system"',
                    lit(self.prefix["system"] + self.system_preamble)
                    + "{{ .Content }}"
                    + lit(self.suffix["system"]),
                )
            )
        user_body = lit(self.prefix["user"])
        if self.system_mode == "first_user":
            user_body += (
                "{{ if and $.System (not $merged) }}{{ $.System }}"
                + lit(self.system_joiner)
                + "{{ end }}{{ $merged = true }}"
            )
        elif self.system_mode == "last_user":
            user_body += (
                "{{ if and $.System (eq (len (slice $.Messages $i)) 1) }}{{ $.System }}"
                + lit(self.system_joiner)
                + "{{ end }}"
            )
        user_body += "{{ .Content }}" + lit(self.suffix["user"])
        branches.append(('eq .Role "user"', user_body))
        branches.append(
            (
                'eq .Role "assistant"',
                lit(self.prefix["assistant"]) + "{{ .Content }}" + lit(self.suffix["assistant"]),
            )
        )
        for n, (cond, body) in enumerate(branches):
            parts.append(("{{ if " if n == 0 else "{{ else if ") + cond + " }}" + body)
        parts.append("{{ end }}{{ end }}")
        parts.append(lit(self.serving_generation_prompt))
        return "".join(parts)


def _go_literal(text: str) -> str:
    """Literal text inside a Go template: only `{{` needs escaping."""
    return text.replace("{{", '{{ "{{" }}')


# ---------------------------------------------------------------------------------------------
# known families (static structure; per-model details are probed)

_FAMILIES: dict[str, ChatFamily] = {
    "chatml": ChatFamily(
        "chatml",
        prefix={r: f"<|im_start|>{r}\n" for r in ROLES},
        suffix={r: "<|im_end|>\n" for r in ROLES},
        generation_prompt="<|im_start|>assistant\n",
        stops=("<|im_end|>", "<|im_start|>", "<|endoftext|>"),
    ),
    "llama3": ChatFamily(
        "llama3",
        prefix={r: f"<|start_header_id|>{r}<|end_header_id|>\n\n" for r in ROLES},
        suffix={r: "<|eot_id|>" for r in ROLES},
        generation_prompt="<|start_header_id|>assistant<|end_header_id|>\n\n",
        stops=("<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|end_of_text|>"),
        trim=frozenset(ROLES),
    ),
    "mistral": ChatFamily(
        "mistral",
        prefix={"system": "", "user": "[INST] ", "assistant": " "},
        suffix={"system": "", "user": "[/INST]", "assistant": "</s>"},
        generation_prompt="",
        stops=("[INST]", "[/INST]", "</s>"),
        system_mode="last_user",
        trim=frozenset({"assistant"}),
    ),
    "gemma": ChatFamily(
        "gemma",
        prefix={"system": "", "user": "<start_of_turn>user\n", "assistant": "<start_of_turn>model\n"},
        suffix={"system": "", "user": "<end_of_turn>\n", "assistant": "<end_of_turn>\n"},
        generation_prompt="<start_of_turn>model\n",
        stops=("<end_of_turn>", "<start_of_turn>", "<eos>"),
        system_mode="first_user",
        trim=frozenset(ROLES),
    ),
    "phi3": ChatFamily(
        "phi3",
        prefix={r: f"<|{r}|>\n" for r in ROLES},
        suffix={r: "<|end|>\n" for r in ROLES},
        generation_prompt="<|assistant|>\n",
        stops=("<|end|>", "<|user|>", "<|assistant|>", "<|system|>", "<|endoftext|>"),
    ),
}
FAMILIES = tuple(_FAMILIES)
# marker in the template or the vocabulary -> family, most specific first
_MARKERS = (
    ("<|start_header_id|>", "llama3"),
    ("<|im_start|>", "chatml"),
    ("<start_of_turn>", "gemma"),
    ("<|assistant|>", "phi3"),
    ("[INST]", "mistral"),
)


def family_names() -> tuple[str, ...]:
    return FAMILIES


def _template_text(tokenizer: Any) -> str | None:
    tmpl = getattr(tokenizer, "chat_template", None)
    if isinstance(tmpl, dict):
        tmpl = tmpl.get("default") or next(iter(tmpl.values()), None)
    if isinstance(tmpl, list):
        tmpl = next((t["template"] for t in tmpl if t.get("name") == "default"), None)
    return tmpl if isinstance(tmpl, str) and tmpl.strip() else None


def guess_family_name(template: str | None, vocab_tokens: set[str]) -> str | None:
    haystack = template if template else ""
    for marker, name in _MARKERS:
        if marker in haystack:
            return name
    if not template:
        for marker, name in _MARKERS:
            if marker in vocab_tokens:
                return name
    return None


def _special_vocab(tokenizer: Any) -> set[str]:
    found = set(getattr(tokenizer, "all_special_tokens", []) or [])
    try:
        found |= set(tokenizer.get_added_vocab())
    except Exception:  # noqa: BLE001 - slow tokenizers without added vocab
        pass
    return found


def _stops(base: Sequence[str], tokenizer: Any, extra_eos_ids: Sequence[int]) -> tuple[str, ...]:
    """Family end tokens that exist in this vocabulary, plus every EOS the model config names."""
    vocab = _special_vocab(tokenizer)
    try:
        full_vocab = tokenizer.get_vocab()
    except Exception:  # noqa: BLE001
        full_vocab = {}
    stops: list[str] = [s for s in base if s in vocab or s in full_vocab]
    eos_texts = []
    if getattr(tokenizer, "eos_token", None):
        eos_texts.append(tokenizer.eos_token)
    for tid in extra_eos_ids:
        try:
            text = tokenizer.convert_ids_to_tokens(int(tid))
        except Exception:  # noqa: BLE001
            text = None
        if text:
            eos_texts.append(text)
    for text in eos_texts:
        if text not in stops:
            stops.append(text)
    return tuple(stops)


def _apply(tokenizer: Any, messages: list[Message], add_generation_prompt: bool, **kw: Any) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kw
    )


def _between(text: str, start: str, end: str) -> str | None:
    i = text.find(start)
    if i < 0:
        return None
    j = text.find(end, i + len(start))
    return None if j < 0 else text[i + len(start) : j]


def _probe(base: ChatFamily, tokenizer: Any) -> ChatFamily:
    """Fill in the per-model details by rendering sentinel conversations with the HF template."""
    fam = base
    user_only = _apply(tokenizer, [{"role": "user", "content": _PROBE_U}], False)
    # BOS text the template writes itself
    bos = getattr(tokenizer, "bos_token", None) or ""
    # (SmolLM2's bos_token is <|im_start|>, which also starts every turn: check what follows it)
    if bos and any(user_only.startswith(bos + fam.prefix[r]) for r in ("system", "user")):
        fam = replace(fam, bos=bos)
    if fam.system_mode == "turn":
        sys_user = _apply(
            tokenizer, [{"role": "system", "content": _PROBE_S}, {"role": "user", "content": _PROBE_U}], False
        )
        content = _between(sys_user, fam.prefix["system"], fam.suffix["system"])
        if content is not None and content.endswith(_PROBE_S):
            fam = replace(fam, system_preamble=content[: -len(_PROBE_S)])
        default = _between(user_only, fam.bos + fam.prefix["system"], fam.suffix["system"])
        if default is not None and user_only.startswith(fam.bos + fam.prefix["system"]):
            if default == fam.system_preamble:
                fam = replace(fam, system_always=True)
            else:
                fam = replace(
                    fam,
                    default_system=default[len(fam.system_preamble) :]
                    if default.startswith(fam.system_preamble)
                    else default,
                )
    # Qwen3: the answer to the last user turn carries an (empty) think block
    with_answer = _apply(
        tokenizer, [{"role": "user", "content": _PROBE_U}, {"role": "assistant", "content": _PROBE_A}], False
    )
    header = fam.prefix["assistant"]
    answer = _between(with_answer, header, _PROBE_A)
    if answer and answer.strip().startswith("<think>"):
        fam = replace(fam, think_prefix=answer)
    # trailing text after the last turn when no generation prompt is asked for (Phi-3 appends EOS)
    tail = with_answer.split(_PROBE_A + fam.suffix["assistant"], 1)
    if len(tail) == 2 and tail[1] and fam.suffix["assistant"]:
        fam = replace(fam, closing=tail[1])
    eos = getattr(tokenizer, "eos_token", None) or ""
    if fam.name == "mistral" and eos:
        fam = replace(fam, suffix={**fam.suffix, "assistant": eos}, eos=eos)
    return replace(fam, eos=eos or fam.eos)


_CHECK_CONVERSATIONS: tuple[tuple[tuple[str, str], ...], ...] = (
    (("user", "Hi there"),),
    (("system", "Be brief."), ("user", "Hi there")),
    (("system", "Be brief."), ("user", "What is 2+2?"), ("assistant", "4.")),
    (("user", "What is 2+2?"), ("assistant", "4.")),
    (("system", "Be brief."), ("user", "One"), ("assistant", "Uno"), ("user", "Two"), ("assistant", "Dos")),
    (("user", "One"), ("assistant", "Uno"), ("user", "Two")),
)


def verify_against_tokenizer(family: ChatFamily, tokenizer: Any) -> None:
    """Raise ChatFormatError unless render() == apply_chat_template on every check conversation."""
    for conv in _CHECK_CONVERSATIONS:
        msgs = [{"role": r, "content": c} for r, c in conv]
        for gen in (False, True):
            if gen and msgs[-1]["role"] == "assistant":
                continue
            try:
                want = _apply(tokenizer, msgs, gen)
            except Exception as exc:  # noqa: BLE001 - e.g. Gemma 2 refuses system messages
                log.debug("template refuses %s: %s", [m["role"] for m in msgs], exc)
                continue
            got = family.render(msgs, add_generation_prompt=gen)
            if got != want:
                raise ChatFormatError(
                    f"the model's chat template looks like {family.name!r} but differs from it for roles "
                    f"{[m['role'] for m in msgs]} (add_generation_prompt={gen}):\n  template: {want!r}\n  ours:     {got!r}\n"
                    "Set modelfile.template to an Ollama template for this model."
                )


def detect_family(
    tokenizer: Any,
    extra_eos_ids: Sequence[int] = (),
    template_override: str | None = None,
) -> ChatFamily:
    """The ChatFamily of an HF tokenizer (probed and verified), or ChatFormatError.

    With `template_override` (an Ollama Go template) an unknown family is accepted: Ollama gets
    that template, Python rendering falls back to the HF template, stops come from the tokenizer.
    """
    template = _template_text(tokenizer)
    name = guess_family_name(template, _special_vocab(tokenizer))
    if name is None:
        if template_override is None:
            raise ChatFormatError(
                "unknown chat format: the tokenizer's chat template matches none of "
                f"{', '.join(FAMILIES)}. Set modelfile.template to an Ollama Go template for this model."
            )
        return _custom(tokenizer, extra_eos_ids, template_override, template)
    base = _FAMILIES[name]
    if template:
        family = _probe(base, tokenizer)
        try:
            verify_against_tokenizer(family, tokenizer)
        except ChatFormatError:
            if template_override is None:
                raise
            log.warning("chat template not reproduced exactly; using the supplied Ollama template override")
    else:
        log.warning(
            "tokenizer has no chat template; using the standard %s layout from its special tokens", name
        )
        bos = (getattr(tokenizer, "bos_token", None) or "") if name in ("llama3", "gemma", "mistral") else ""
        family = replace(base, bos=bos)
    family = replace(
        family, stops=_stops(base.stops, tokenizer, extra_eos_ids), template_override=template_override
    )
    return family


def _custom(tokenizer: Any, extra_eos_ids: Sequence[int], override: str, template: str | None) -> ChatFamily:
    def render(messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
        if template is None:
            raise ChatFormatError("no chat template in the tokenizer to render training text with")
        return _apply(tokenizer, list(messages), add_generation_prompt)

    empty = {r: "" for r in ROLES}
    return ChatFamily(
        "custom",
        prefix=empty,
        suffix=empty,
        generation_prompt="",
        stops=_stops((), tokenizer, extra_eos_ids),
        eos=getattr(tokenizer, "eos_token", "") or "",
        template_override=override,
        fallback_render=render,
    )


def generation_eos_ids(model_dir: Path) -> list[int]:
    """eos_token_id(s) from generation_config.json and config.json (may be an int or a list)."""
    ids: list[int] = []
    for name in ("generation_config.json", "config.json"):
        path = Path(model_dir) / name
        if not path.is_file():
            continue
        value = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
        for tid in value if isinstance(value, list) else [value]:
            if isinstance(tid, int) and tid not in ids:
                ids.append(tid)
    return ids


def load_family(model_dir: Path, template_override: str | None = None) -> ChatFamily:
    """detect_family for a model folder (tokenizer files + generation_config.json)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return detect_family(tokenizer, generation_eos_ids(model_dir), template_override)
