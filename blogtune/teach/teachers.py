"""Teachers: who writes the Q&A and rewrites.

  none    no teacher: only the teacher-free views are made
  openai  any OpenAI-compatible chat-completions endpoint (Ollama /v1, llama.cpp server,
          mlx_lm.server, vLLM, LM Studio, a hosted API), bounded concurrency, timeouts and
          retries with exponential backoff (the `openai` client's own)
  local   an mlx-lm model in this process, generating a batch of prompts at once

`run(jobs)` takes [(post, [Request...])] and yields (post, {request key: text}) as each post's
requests are all answered, so the caller can cache a finished post before the next one fails.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


class TeachError(RuntimeError):
    """The teacher failed; the message names the post and the endpoint/model."""


@dataclass(frozen=True)
class Request:
    post: str
    key: str  # unique within the post
    messages: list[dict]


Jobs = Sequence[tuple[str, Sequence[Request]]]


@dataclass
class TeacherStats:
    requests: int = 0  # answered requests (retries inside one request not counted)
    output_tokens: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, tokens: int) -> None:
        with self.lock:
            self.requests += 1
            self.output_tokens += tokens


class OpenAITeacher:
    def __init__(self, base_url: str, model: str, api_key_env: str | None = None, concurrency: int = 4,
                 timeout_s: float = 120.0, retries: int = 3, temperature: float = 0.3, max_tokens: int = 512):
        import openai

        if not model:
            raise TeachError("teach.teacher.model: the openai teacher needs a model name")
        key = None
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise TeachError(f"teach.teacher.api_key_env: environment variable {api_key_env} is not set")
        self.base_url, self.model = base_url, model
        self.concurrency = max(1, int(concurrency))
        self.temperature, self.max_tokens, self.retries = temperature, max_tokens, retries
        # Local servers ignore the key; the client insists on one.
        self.client = openai.OpenAI(base_url=base_url, api_key=key or "unused", timeout=timeout_s,
                                    max_retries=retries)
        self.stats = TeacherStats()

    @property
    def identity(self) -> dict:
        """What decides the teacher's answers (cache key): never the key, concurrency or timeout."""
        return {"kind": "openai", "base_url": self.base_url, "model": self.model,
                "temperature": self.temperature, "max_tokens": self.max_tokens}

    def _ask(self, req: Request) -> str:
        try:
            resp = self.client.chat.completions.create(
                model=self.model, messages=req.messages, temperature=self.temperature, max_tokens=self.max_tokens)
            text = resp.choices[0].message.content
            if text is None:
                raise ValueError("answer has no message content")
        except Exception as err:  # noqa: BLE001 - every failure gets the same clear message
            raise TeachError(
                f"teach: post {req.post}: teacher {self.model!r} at {self.base_url} failed "
                f"(after up to {self.retries} retries): {type(err).__name__}: {err}"
            ) from err
        usage = getattr(resp, "usage", None)
        self.stats.add(getattr(usage, "completion_tokens", 0) or 0)
        return text

    def run(self, jobs: Jobs) -> Iterator[tuple[str, dict[str, str]]]:
        pending = {post: len(reqs) for post, reqs in jobs}
        answers: dict[str, dict[str, str]] = {post: {} for post, _ in jobs}
        for post, n in list(pending.items()):
            if n == 0:
                del pending[post]
                yield post, {}
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="teacher")
        try:
            futures = {pool.submit(self._ask, r): r for _, reqs in jobs for r in reqs}
            todo = set(futures)
            while todo:
                done, todo = wait(todo, return_when=FIRST_EXCEPTION)
                # answered requests first: a post finished in this round is yielded (and cached)
                # before another request's failure is raised
                failed = [f for f in done if f.exception() is not None]
                for fut in done:
                    if fut.exception() is not None:
                        continue
                    req = futures[fut]
                    answers[req.post][req.key] = fut.result()
                    pending[req.post] -= 1
                    if pending[req.post] == 0:
                        del pending[req.post]
                        yield req.post, answers.pop(req.post)
                if failed:
                    raise failed[0].exception()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


class LocalTeacher:
    """An mlx-lm model in-process; prompts are generated `batch_size` at a time (batch_generate)."""

    def __init__(self, model_path: str, spec: str, batch_size: int = 8, temperature: float = 0.3,
                 max_tokens: int = 512, repetition_penalty: float = 1.1, seed: int = 0):
        self.model_path, self.spec = model_path, spec
        self.batch_size = max(1, int(batch_size))
        self.temperature, self.max_tokens = temperature, max_tokens
        self.repetition_penalty, self.seed = repetition_penalty, seed
        self.stats = TeacherStats()
        self._loaded = None

    @property
    def identity(self) -> dict:
        return {"kind": "local", "model": self.spec, "temperature": self.temperature,
                "max_tokens": self.max_tokens, "repetition_penalty": self.repetition_penalty, "seed": self.seed}

    def _load(self):
        if self._loaded is None:
            from mlx_lm import load

            self._loaded = load(self.model_path)
        return self._loaded

    def run(self, jobs: Jobs) -> Iterator[tuple[str, dict[str, str]]]:
        pending = {post: len(reqs) for post, reqs in jobs}
        answers: dict[str, dict[str, str]] = {post: {} for post, _ in jobs}
        for post, n in list(pending.items()):
            if n == 0:
                del pending[post]
                yield post, answers.pop(post)
        flat = [r for _, reqs in jobs for r in reqs]
        for start in range(0, len(flat), self.batch_size):
            batch = flat[start : start + self.batch_size]
            for req, text in zip(batch, self._generate(batch), strict=True):
                answers[req.post][req.key] = text
                pending[req.post] -= 1
                if pending[req.post] == 0:
                    del pending[req.post]
                    yield req.post, answers.pop(req.post)

    def _generate(self, batch: list[Request]) -> list[str]:
        import mlx.core as mx
        from mlx_lm.generate import batch_generate
        from mlx_lm.sample_utils import make_logits_processors, make_sampler

        model, tokenizer = self._load()
        mx.random.seed(self.seed)
        prompts = [tokenizer.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=True,
                                                 return_dict=False) for r in batch]
        try:
            resp = batch_generate(
                model, tokenizer, prompts, max_tokens=self.max_tokens,
                sampler=make_sampler(temp=self.temperature),
                logits_processors=make_logits_processors(repetition_penalty=self.repetition_penalty),
            )
        except Exception as err:  # noqa: BLE001
            raise TeachError(f"teach: post {batch[0].post}: local teacher {self.spec!r} failed: {err}") from err
        for _ in batch:
            self.stats.add(0)
        self.stats.output_tokens += int(resp.stats.generation_tokens)
        return list(resp.texts)


def make_teacher(settings: dict, local_model_path: str | None = None):
    """The teacher of `teach.teacher` settings; None for kind `none`."""
    kind = settings.get("kind", "none")
    if kind == "none":
        return None
    if kind == "openai":
        return OpenAITeacher(settings["base_url"], settings.get("model"), settings.get("api_key_env"),
                             settings.get("concurrency", 4), settings.get("timeout_s", 120),
                             settings.get("retries", 3), settings.get("temperature", 0.3),
                             settings.get("max_tokens", 512))
    if kind == "local":
        spec = settings.get("model") or "embedded"
        return LocalTeacher(local_model_path or spec, spec, settings.get("batch_size", 8),
                            settings.get("temperature", 0.3), settings.get("max_tokens", 512),
                            settings.get("repetition_penalty", 1.1), settings.get("seed", 0))
    raise TeachError(f"teach.teacher.kind: {kind!r} is not one of none, openai, local")
