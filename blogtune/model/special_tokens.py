"""The token that ends an assistant turn, the model's EOS/BOS, and the config overrides for them.

A chat model stops generating at one of its stop ids (tokenizer `eos_token` plus the
`eos_token_id`s of generation_config.json / config.json). Training teaches it to emit the token its
chat template ends a turn with, which is not always `eos_token`: Gemma ends turns with
`<end_of_turn>` (eos `<eos>`), Phi-3 with `<|end|>` (eos `<|endoftext|>`), Llama 3 instruct with
`<|eot_id|>`. That is fine as long as the end-of-turn token is one of the stop ids. When it is not
(early Yi chat models: ChatML turns, eos `<|endoftext|>`), the fine-tuned model never stops; users
used to edit tokenizer_config.json by hand. `model.eos_token` / `model.bos_token` do that edit on
the converted model, so format, train, fuse, evaluate, GGUF and the Modelfile all read the same
tokens. Checked at preflight from the JSON files alone (no transformers import: it runs on every
`snakemake` call).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from blogtune.io_utils import atomic_write_json

log = logging.getLogger(__name__)

EOS_KEY = "model.eos_token"
BOS_KEY = "model.bos_token"
TOKENIZER_JSONS = ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json", "config.json")


class SpecialTokenError(ValueError):
    """End-of-turn / EOS / BOS tokens that disagree; the message names the config key."""


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # older files: {"content": "<s>", ...}
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def family_end_of_turn(template: str | None, vocab: set[str] | None = None) -> str | None:
    """The token a known chat family's template ends an assistant turn with, or None."""
    from blogtune.model.chat_format import _FAMILIES, guess_family_name

    name = guess_family_name(template, vocab or set())
    if name is None:
        return None
    end = _FAMILIES[name].suffix["assistant"].strip()
    return end or None


def end_of_turn_token(tokenizer: Any) -> str:
    """What every chat training sample must end with: the chat family's end-of-turn token when the
    template is a known family, else the tokenizer's eos_token."""
    template = getattr(tokenizer, "chat_template", None)
    template = template if isinstance(template, str) else None
    try:
        vocab = set(tokenizer.get_added_vocab())
    except Exception:  # noqa: BLE001 - slow tokenizers without added vocab
        vocab = set()
    end = family_end_of_turn(template, vocab)
    if end and (end in vocab or end in tokenizer.get_vocab()):
        return end
    eos = getattr(tokenizer, "eos_token", None)
    if not eos:
        raise SpecialTokenError(
            f"the base model's tokenizer has no eos_token; set {EOS_KEY} or use format.style: text"
        )
    return eos


# ---------------------------------------------------------------------------------------------
# preflight: JSON files only


def _read(folder: Path, name: str) -> dict:
    path = folder / name
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def special_vocab(folder: Path) -> dict[str, int]:
    """content -> id of the added (special) tokens, from tokenizer_config.json or tokenizer.json."""
    decoder = _read(folder, "tokenizer_config.json").get("added_tokens_decoder") or {}
    found = {tok["content"]: int(tid) for tid, tok in decoder.items() if isinstance(tok, dict)}
    if not found:
        found = {t["content"]: int(t["id"]) for t in _read(folder, "tokenizer.json").get("added_tokens", [])}
    return found


def _ids(value: Any) -> list[int]:
    return [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, int)]


def stop_ids(folder: Path) -> set[int]:
    ids: set[int] = set()
    for name in ("generation_config.json", "config.json"):
        ids.update(_ids(_read(folder, name).get("eos_token_id")))
    return ids


def chat_template_text(folder: Path) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    tmpl = _read(folder, "tokenizer_config.json").get("chat_template")
    if isinstance(tmpl, list):
        tmpl = next((t.get("template") for t in tmpl if t.get("name") == "default"), None)
    return tmpl if isinstance(tmpl, str) else None


def check_special_tokens(folder: Path, eos_override: str | None = None, bos_override: str | None = None) -> dict:
    """Raise SpecialTokenError unless a chat model's end-of-turn token is one of its stop tokens
    (after the overrides). Returns what was found, for logs."""
    folder = Path(folder)
    vocab = special_vocab(folder)
    for key, token in ((EOS_KEY, eos_override), (BOS_KEY, bos_override)):
        if token is not None and token not in vocab:
            raise SpecialTokenError(
                f"{key}: {token!r} is not a special token of the base model's tokenizer "
                f"({folder}); pick one of its added tokens, e.g. {sorted(vocab)[:8]}"
            )
    tok_cfg = _read(folder, "tokenizer_config.json")
    eos = eos_override or _token_text(tok_cfg.get("eos_token")) or _token_text(
        _read(folder, "special_tokens_map.json").get("eos_token")
    )
    template = chat_template_text(folder)
    end = family_end_of_turn(template, set(vocab)) if template else None
    found = {"eos_token": eos, "end_of_turn": end}
    if end is None or end not in vocab or eos_override:
        return found  # no chat family, or the user has decided
    if end != eos and vocab[end] not in stop_ids(folder):
        raise SpecialTokenError(
            f"{EOS_KEY}: the chat template ends each turn with {end!r}, but the tokenizer's eos_token is "
            f"{eos!r} and no eos_token_id in generation_config.json/config.json is {end!r} (id {vocab[end]}): "
            f"the fine-tuned model would never stop. Set {EOS_KEY}: {end!r} in config.yaml "
            "(or fix the model's tokenizer_config.json)"
        )
    return found


# ---------------------------------------------------------------------------------------------
# applying the overrides to a model folder (the converted base model)


def apply_token_overrides(folder: Path, eos: str | None = None, bos: str | None = None) -> dict[str, str]:
    """Write the overrides into the tokenizer and config files of `folder`; returns what changed."""
    folder = Path(folder)
    vocab = special_vocab(folder)
    changed: dict[str, str] = {}
    for kind, token, key in (("eos", eos, EOS_KEY), ("bos", bos, BOS_KEY)):
        if token is None:
            continue
        if token not in vocab:
            raise SpecialTokenError(f"{key}: {token!r} is not a special token of {folder}")
        tid = vocab[token]
        for name in TOKENIZER_JSONS:
            data = _read(folder, name)
            if not data:
                continue
            field = f"{kind}_token" if name in ("tokenizer_config.json", "special_tokens_map.json") else f"{kind}_token_id"
            if name == "special_tokens_map.json" and field not in data:
                continue
            new = token if field.endswith("_token") else tid
            if data.get(field) != new:
                data[field] = new
                atomic_write_json(folder / name, data)
                changed[f"{name}:{field}"] = str(new)
    if changed:
        log.info("special token overrides written: %s", ", ".join(f"{k}={v}" for k, v in changed.items()))
    return changed
