"""Put the GGUF into a running Ollama server and check that the model answers and stops.

Through the `ollama` Python client: upload the GGUF as a blob (skipped when the server already
has that digest), create the model with template / system / parameters as JSON fields (no
Modelfile quoting involved), then one smoke chat. The smoke test catches the classic failures of
fine-tuned imports: never stopping (done_reason "length"), rambling past N tokens, and template
tokens leaking into the reply (wrong template or stop list).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from blogtune.export.modelfile import effective_system, ollama_parameters
from blogtune.model.chat_format import ChatFamily

log = logging.getLogger(__name__)


class OllamaUnavailable(RuntimeError):
    """No Ollama server answers at the configured host (message is one line, no traceback needed)."""


class SmokeTestError(RuntimeError):
    """The deployed model answered badly; the message lists what was wrong."""


@dataclass
class SmokeResult:
    prompt: str
    reply: str
    done_reason: str | None
    eval_count: int | None
    max_tokens: int
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


@dataclass
class DeployResult:
    host: str
    model: str
    digest: str
    uploaded: bool
    seconds: float
    smoke: SmokeResult | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.smoke is not None:
            data["smoke"]["passed"] = self.smoke.passed
        return data


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def _unavailable(host: str, exc: BaseException | None = None) -> OllamaUnavailable:
    why = f" ({type(exc).__name__})" if exc is not None else ""
    return OllamaUnavailable(
        f"no Ollama server reachable at {host}{why}: start it with `ollama serve` or set ollama.host"
    )


def check_server(host: str, timeout: float = 5.0) -> str:
    """The server's version string, or OllamaUnavailable."""
    import httpx

    try:
        r = httpx.get(f"{host.rstrip('/')}/api/version", timeout=timeout)
        r.raise_for_status()
        return str(r.json().get("version", "?"))
    except (httpx.TransportError, httpx.HTTPStatusError, ValueError) as exc:
        raise _unavailable(host, exc) from None


def _has_blob(host: str, digest: str) -> bool:
    import httpx

    r = httpx.head(f"{host.rstrip('/')}/api/blobs/{digest}", timeout=30)
    return r.status_code == 200


def leaked_tokens(reply: str, family: ChatFamily) -> list[str]:
    """Template markup that should never appear in a clean answer."""
    markers = set(family.stops)
    for text in (*family.prefix.values(), *family.suffix.values(), family.generation_prompt):
        for tok in _special_like(text):
            markers.add(tok)
    return sorted(m for m in markers if m and m in reply)


def _special_like(text: str) -> list[str]:
    import re

    return re.findall(r"<\|[^|<>]{1,40}\|>|<[a-z_]{2,20}_of_turn>|\[/?INST\]|</s>", text)


def smoke_check(
    reply: str, done_reason: str | None, eval_count: int | None, max_tokens: int, family: ChatFamily
) -> list[str]:
    problems = []
    if done_reason != "stop":
        problems.append(
            f"reply did not end on a stop token (done_reason={done_reason!r}): the model never stopped"
        )
    if eval_count is not None and eval_count >= max_tokens:
        problems.append(f"reply used {eval_count} tokens, the limit was {max_tokens}")
    leaked = leaked_tokens(reply, family)
    if leaked:
        problems.append(f"reply contains template tokens {leaked}: template or stop list is wrong")
    if not reply.strip():
        problems.append("reply is empty")
    return problems


def deploy(
    gguf_path: Path,
    model_name: str,
    family: ChatFamily,
    *,
    host: str = "http://127.0.0.1:11434",
    system: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    template: str | None = None,
    smoke_prompt: str | None = "Hello! Who are you?",
    max_tokens: int = 256,
    timeout: float = 600.0,
) -> DeployResult:
    """Create `model_name` in Ollama from `gguf_path`; run the smoke prompt unless it is None."""
    import httpx
    import ollama

    start = time.perf_counter()
    gguf_path = Path(gguf_path)
    version = check_server(host)
    log.info("Ollama %s at %s", version, host)
    client = ollama.Client(host=host, timeout=timeout)
    try:
        digest = file_digest(gguf_path)
        uploaded = False
        if not _has_blob(host, digest):
            log.info("uploading %s (%.1f MB)", gguf_path.name, gguf_path.stat().st_size / 1e6)
            digest = client.create_blob(gguf_path)
            uploaded = True
        else:
            log.info("server already has %s", digest[:19])
        params = ollama_parameters(family, parameters)
        sys_text = effective_system(family, system)
        client.create(
            model=model_name,
            files={gguf_path.name: digest},
            template=template if template is not None else family.ollama_template(),
            system=sys_text,
            parameters=params,
            stream=False,
        )
        log.info("created model %s (%s template, %d stops)", model_name, family.name, len(params["stop"]))
        result = DeployResult(host, model_name, digest, uploaded, 0.0)
        if smoke_prompt:
            result.smoke = run_smoke(client, model_name, smoke_prompt, family, max_tokens)
    except (ConnectionError, httpx.TransportError) as exc:
        raise _unavailable(host, exc) from None
    result.seconds = time.perf_counter() - start
    return result


def run_smoke(client: Any, model_name: str, prompt: str, family: ChatFamily, max_tokens: int) -> SmokeResult:
    response = client.chat(
        model=model_name,
        messages=[{"role": "user", "content": prompt}],
        options={"num_predict": max_tokens, "temperature": 0},
        stream=False,
    )
    reply = response.message.content or ""
    done_reason = getattr(response, "done_reason", None)
    eval_count = getattr(response, "eval_count", None)
    result = SmokeResult(prompt, reply, done_reason, eval_count, max_tokens)
    result.problems = smoke_check(reply, done_reason, eval_count, max_tokens, family)
    if result.passed:
        log.info("smoke test passed: %d tokens, reply %r", eval_count or -1, reply[:120])
    else:
        log.warning("smoke test FAILED: %s", "; ".join(result.problems))
    return result
