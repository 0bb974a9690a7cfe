"""Ollama Modelfile: FROM + TEMPLATE + one stop line per end token + sampling parameters + SYSTEM.

Ollama's Modelfile parser (parser/parser.go) has no escape sequences. A value ends at the first
newline at which the text read so far, trimmed, forms a complete value: unquoted, `"…"` or
`\"\"\"…\"\"\"`. Only printable runes (Unicode L/M/N/P/S and space) survive, plus newlines and tabs
inside quotes. So a value is carried exactly iff no line of it ends (before optional spaces) with
the closing quote, and it holds nothing unprintable. We check that and raise ModelfileError naming
the config key instead of writing a file Ollama would read differently.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from blogtune.io_utils import atomic_write_text
from blogtune.model.chat_format import ChatFamily

log = logging.getLogger(__name__)

# Ollama's documented runtime parameters and their value types (stop is handled apart).
PARAMETER_TYPES: dict[str, type] = {
    "num_ctx": int,
    "num_predict": int,
    "num_keep": int,
    "repeat_last_n": int,
    "seed": int,
    "top_k": int,
    "num_batch": int,
    "num_gpu": int,
    "num_thread": int,
    "temperature": float,
    "top_p": float,
    "min_p": float,
    "typical_p": float,
    "repeat_penalty": float,
    "presence_penalty": float,
    "frequency_penalty": float,
    "use_mmap": bool,
}
_PARAM_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_GO_SPACE = " \t\n\v\f\r\x85\xa0"  # what Go's strings.TrimSpace removes (ASCII + NEL + NBSP)


class ModelfileError(ValueError):
    """A value that a Modelfile cannot carry faithfully; the message names the config key."""


def _unprintable(value: str) -> list[str]:
    """Characters Ollama's parser would silently drop (it keeps newline, CR and tab inside quotes)."""
    bad = []
    for ch in value:
        if ch in " \n\r\t":
            continue
        if unicodedata.category(ch)[0] not in "LMNPS":
            bad.append(f"U+{ord(ch):04X}")
    return sorted(set(bad))


def _ends_early(value: str, closing: str) -> bool:
    """Would the parser stop at a newline inside `value` because that line ends with `closing`?"""
    for m in re.finditer(r"[\r\n]", value):
        if value[: m.start()].rstrip(_GO_SPACE).endswith(closing):
            return True
    return False


def quote_value(value: str, key: str, *, prefer: str = "triple") -> str:
    """`value` in a form Ollama parses back to exactly `value`, or ModelfileError naming `key`."""
    bad = _unprintable(value)
    if bad:
        raise ModelfileError(
            f"{key}: contains characters an Ollama Modelfile drops ({', '.join(bad[:6])}); remove them"
        )
    forms = ['"""', '"'] if prefer == "triple" else ['"', '"""']
    for q in forms:
        if q == '"' and value.startswith('""'):
            continue  # `"""…` would be read as the start of a triple-quoted value
        if not _ends_early(value, q):
            return f"{q}{value}{q}"
    raise ModelfileError(
        f"{key}: a line of this value ends with '\"\"\"' (or '\"'), which an Ollama Modelfile cannot carry; "
        "rephrase that line (e.g. add a character after the quotes)"
    )


def _param_value(name: str, value: Any, key: str) -> str:
    want = PARAMETER_TYPES.get(name)
    if want is None:
        raise ModelfileError(
            f"{key}: unknown Ollama parameter {name!r}; known: {', '.join(sorted(PARAMETER_TYPES))} (and stop)"
        )
    if want is bool:
        if not isinstance(value, bool):
            raise ModelfileError(f"{key}: expected true/false, got {value!r}")
        return "true" if value else "false"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ModelfileError(f"{key}: expected a number, got {value!r}")
    if want is int:
        if float(value) != int(value):
            raise ModelfileError(f"{key}: expected an integer, got {value!r}")
        return str(int(value))
    return repr(float(value))


def stop_list(family: ChatFamily, parameters: Mapping[str, Any] | None) -> list[str]:
    """Family stops first, then any extra `stop` entries from the parameters, without repeats."""
    extra = (parameters or {}).get("stop") or []
    if isinstance(extra, str):
        extra = [extra]
    stops: list[str] = []
    for s in [*family.stops, *extra]:
        if s and s not in stops:
            stops.append(s)
    return stops


def effective_system(family: ChatFamily, system: str | None) -> str | None:
    """The user's system prompt, else the template's own default (SmolLM2 injects one)."""
    if system is not None and system != "":
        return system
    return family.default_system


def build_modelfile(
    gguf_name: str,
    family: ChatFamily,
    system: str | None,
    parameters: Mapping[str, Any] | None = None,
    *,
    template: str | None = None,
    comment: str | None = None,
    keys: Mapping[str, str] | None = None,
) -> str:
    """The Modelfile text. `template` overrides the family's Ollama template.

    `keys` maps "system", "parameters" and "template" to the config keys named in errors.
    """
    keys = {
        "system": "system_prompt",
        "parameters": "modelfile.parameters",
        "template": "modelfile.template",
        **(keys or {}),
    }
    name = Path(gguf_name).name
    if not name.endswith(".gguf"):
        name += ".gguf"
    if any(c in name for c in "\n\r\t") or name != name.strip():
        raise ModelfileError(f"GGUF file name {name!r} cannot be used in a FROM line")
    lines = []
    if comment:
        lines.extend(f"# {line}" if line else "#" for line in comment.splitlines())
    lines.append(f"FROM ./{name}")
    tmpl = template if template is not None else family.ollama_template()
    lines.append(f"TEMPLATE {quote_value(tmpl, keys['template'])}")
    for stop in stop_list(family, parameters):
        lines.append(f"PARAMETER stop {quote_value(stop, keys['parameters'] + '.stop', prefer='single')}")
    for pname, value in (parameters or {}).items():
        if pname == "stop" or value is None:
            continue
        key = f"{keys['parameters']}.{pname}"
        if not _PARAM_NAME.match(str(pname)):
            raise ModelfileError(f"{key}: parameter names may only hold letters, digits and '_'")
        lines.append(f"PARAMETER {pname} {_param_value(pname, value, key)}")
    sys_text = effective_system(family, system)
    if sys_text:
        lines.append(f"SYSTEM {quote_value(sys_text, keys['system'])}")
    return "\n".join(lines) + "\n"


def write_modelfile(
    path: Path,
    gguf_name: str,
    family: ChatFamily,
    system: str | None,
    parameters: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Path:
    """build_modelfile, written atomically (a failed build leaves no file behind)."""
    text = build_modelfile(gguf_name, family, system, parameters, **kwargs)
    atomic_write_text(path, text)
    log.info("wrote %s (%s template, %d stop tokens)", path, family.name, len(stop_list(family, parameters)))
    return Path(path)


def ollama_parameters(family: ChatFamily, parameters: Mapping[str, Any] | None) -> dict[str, Any]:
    """The same parameters as the Modelfile, as the JSON dict /api/create takes."""
    out: dict[str, Any] = {}
    key = "modelfile.parameters"
    for pname, value in (parameters or {}).items():
        if pname == "stop" or value is None:
            continue
        _param_value(pname, value, f"{key}.{pname}")  # same validation
        out[pname] = value
    out["stop"] = stop_list(family, parameters)
    return out
