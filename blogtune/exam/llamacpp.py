"""The shipped GGUF in an independent engine: llama.cpp (llama-cpp-python, optional).

The prompt, stop list and sampling settings are the Modelfile's own: the chat family that
wrote its TEMPLATE (blogtune.chat_format; `render` is what the Go template produces, with the
Modelfile SYSTEM as the system turn, as Ollama does), and blogtune.modelfile.ollama_parameters
for stop/temperature/top_p/repeat_penalty/repeat_last_n, with Ollama's defaults for the rest.
The repeat penalty's window holds the prompt's last tokens too, as in Ollama (see
`repeat_penalty_over_prompt`). We also check that the Modelfile on disk carries that very
TEMPLATE, so a hand-edited or stale Modelfile shows up instead of passing silently.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from blogtune.exam.answers import abstains, exact_match, has_loop, token_f1
from blogtune.exam.stats import by_lang, mean_ci, rate

log = logging.getLogger(__name__)
SKIPPED = "skipped: llama-cpp-python not installed"
OLLAMA_DEFAULTS = {"temperature": 0.8, "top_p": 0.9, "top_k": 40, "min_p": 0.0, "repeat_penalty": 1.1, "repeat_last_n": 64, "seed": 0}


def available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class Serving:
    """What Ollama would do with the Modelfile: prompt rendering, stops, sampling, context."""

    family: Any  # blogtune.chat_format.ChatFamily
    system: str | None
    stops: list[str]
    sampling: dict[str, Any]
    num_ctx: int
    template_in_modelfile: bool | None


def serving_from_modelfile(fused_dir: Path, modelfile: Path | None, system: str | None, parameters: Mapping[str, Any] | None, template: str | None) -> Serving:
    from blogtune.export.modelfile import effective_system, ollama_parameters, quote_value
    from blogtune.model.chat_format import load_family

    family = load_family(Path(fused_dir), template)
    params = ollama_parameters(family, parameters)
    in_file = None
    if modelfile is not None and Path(modelfile).is_file():
        line = f"TEMPLATE {quote_value(family.ollama_template(), 'modelfile.template')}"
        in_file = line in Path(modelfile).read_text(encoding="utf-8")
    sampling = {k: params.get(k, v) for k, v in OLLAMA_DEFAULTS.items()}
    return Serving(family, effective_system(family, system), list(params["stop"]), sampling, int(params.get("num_ctx", 2048)), in_file)


def render(serving: Serving, question: str) -> str:
    messages = ([{"role": "system", "content": serving.system}] if serving.system else []) + [{"role": "user", "content": question}]
    return serving.family.render(messages, add_generation_prompt=True, enable_thinking=False)


def load(gguf_path: Path, n_ctx: int = 2048, seed: int = 0):
    from llama_cpp import Llama

    return Llama(str(gguf_path), n_ctx=n_ctx, seed=seed, n_threads=os.cpu_count() or 1, verbose=False)


def prompt_ids(llm, text: str) -> list[int]:
    add_bos = str(llm.metadata.get("tokenizer.ggml.add_bos_token", "false")).lower() == "true"
    return llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)


def repeat_penalty_over_prompt(penalty: float, last_n: int, n_ctx: int):
    """llama.cpp's repeat penalty over the last `last_n` tokens of prompt and answer together.

    Ollama and llama-server pass every prompt token through the sampler before the first answer
    token, so the penalty window opens on the end of the chat template (its end-of-turn token
    included) and the question's words. llama-cpp-python's create_completion penalises generated
    tokens only; this logits processor restores the served behaviour (used with the engine's own
    penalty off). Like llama.cpp: each distinct token in the window once, positive logits divided
    by the penalty, negative ones multiplied; last_n -1 is the whole context, 0 none."""
    window = n_ctx if last_n == -1 else last_n

    def apply(input_ids, scores):
        if window > 0 and penalty != 1.0 and len(input_ids):
            ids = np.unique(np.asarray(input_ids[-window:], dtype=np.int64))
            picked = scores[ids]
            scores[ids] = np.where(picked > 0, picked / penalty, picked * penalty)
        return scores

    return apply


def complete(llm, tokens: Sequence[int], max_tokens: int, stops: Sequence[str], sampling: Mapping[str, Any] | None) -> dict:
    """One answer: text, token ids, finish ("stop": EOS or a stop string; "length": the limit)."""
    from llama_cpp import LogitsProcessorList

    s = dict(sampling or {})
    greedy = sampling is None or float(s.get("temperature", 0)) == 0.0
    penalty = None if greedy else repeat_penalty_over_prompt(float(s["repeat_penalty"]), int(s["repeat_last_n"]), llm.n_ctx())
    llm.reset()
    out = llm.create_completion(
        list(tokens),
        max_tokens=max_tokens,
        stop=list(stops),
        temperature=0.0 if greedy else float(s["temperature"]),
        top_p=1.0 if greedy else float(s["top_p"]),
        top_k=1 if greedy else int(s["top_k"]),
        min_p=0.0 if greedy else float(s["min_p"]),
        repeat_penalty=1.0,  # applied by `penalty`, over the prompt too
        logits_processor=None if penalty is None else LogitsProcessorList([penalty]),
        seed=int(s.get("seed", 0)),
    )
    choice = out["choices"][0]
    text = choice["text"]
    return {"text": text, "ids": llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) if text else [], "finish": choice["finish_reason"], "tokens": out["usage"]["completion_tokens"]}


def greedy_tokens(llm, tokens: Sequence[int], n: int) -> list[int]:
    """The first n greedy token ids after `tokens` (no stop handling: raw engine output)."""
    llm.reset()
    out = []
    for tok in llm.generate(list(tokens), top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
        out.append(int(tok))
        if len(out) >= n:
            break
    return out


def ask_items(llm, serving: Serving, items: Sequence[dict], max_tokens: int, greedy_items: int | None = None) -> dict[str, list[dict]]:
    """Each short-answer item with the Modelfile's sampling (what a user gets), and the first
    `greedy_items` (None: all) greedy too, to hold against the MLX exam's greedy answers.
    An item's budget is the one the MLX exam gave it (`budget`), else max_tokens."""
    out: dict[str, list[dict]] = {"modelfile_sampling": [], "greedy": []}
    n_greedy = len(items) if greedy_items is None else min(greedy_items, len(items))
    for i, it in enumerate(items):
        ids = prompt_ids(llm, render(serving, it["question"]))
        budget = int(it.get("budget") or max_tokens)
        modes = [("modelfile_sampling", serving.sampling)] + ([("greedy", None)] if i < n_greedy else [])
        for mode, sampling in modes:
            a = complete(llm, ids, budget, serving.stops, sampling)
            a.update(item_id=it["item_id"], split=it["split"], lang=it.get("lang"), budget=budget, exact=exact_match(a["text"], it["answer"]), f1=round(token_f1(a["text"], it["answer"]), 4), loop=has_loop(a["ids"]), abstain=abstains(a["text"]))
            out[mode].append(a)
    return out


def greedy_vs_mlx_exam(greedy: Sequence[dict], items: Sequence[dict]) -> dict | None:
    """llama.cpp's greedy answers against the MLX exam's greedy answers to the same items (the
    fine-tuned model, adapters unfused): same ending, and the same text (whitespace aside)."""
    mlx = {it["item_id"]: it["finetuned"] for it in items if "finish" in it.get("finetuned", {})}
    pairs = [(a, mlx[a["item_id"]]) for a in greedy if a["item_id"] in mlx]
    if not pairs:
        return None
    return {
        "items": len(pairs),
        "same_finish": sum(a["finish"] == m["finish"] for a, m in pairs),
        "identical_text": sum(a["text"].strip() == m["answer"].strip() for a, m in pairs),
        "mlx_stop_rate": rate([m["finish"] == "stop" for _, m in pairs]),
    }


def summarize(answers: Sequence[dict], seed: int = 0) -> dict:
    return {
        "answers": len(answers),
        "stop_rate": rate([a["finish"] == "stop" for a in answers]),
        "loop_rate": rate([a["loop"] for a in answers]),
        "exact_match": rate([a["exact"] for a in answers]),
        "token_f1": mean_ci([a["f1"] for a in answers], seed),
    }


def gguf_check(gguf_path: Path, fused_dir: Path, modelfile: Path | None, items: Sequence[dict], *, system: str | None, parameters: Mapping[str, Any] | None, template: str | None, max_tokens: int, greedy_items: int | None = None, agreement_prompts: int = 3, agreement_tokens: int = 16) -> tuple[dict, list[dict]]:
    """Ask the short-answer items in llama.cpp (the first `greedy_items` greedy too) and compare
    greedy tokens with the fused MLX model."""
    started = time.time()
    if not available():
        return {"status": SKIPPED}, []
    serving = serving_from_modelfile(fused_dir, modelfile, system, parameters, template)
    llm = load(gguf_path, n_ctx=serving.num_ctx, seed=int(serving.sampling.get("seed", 0)))
    answers = ask_items(llm, serving, items, max_tokens, greedy_items)
    agreement = greedy_agreement(llm, fused_dir, [render(serving, it["question"]) for it in items[:agreement_prompts]], agreement_tokens)
    metrics = {
        "status": "ok",
        "gguf": str(gguf_path),
        "template_in_modelfile": serving.template_in_modelfile,
        "stops": serving.stops,
        "sampling": serving.sampling,
        "max_tokens": max_tokens,
        "train": {m: summarize([a for a in v if a["split"] == "train"]) for m, v in answers.items()},
        "all": {m: summarize(v) for m, v in answers.items()},
        "stop_rate_by_lang": by_lang(answers["modelfile_sampling"], lambda rs: rate([a["finish"] == "stop" for a in rs])),
        "greedy_vs_mlx_exam": greedy_vs_mlx_exam(answers["greedy"], items),
        "greedy_agreement_with_mlx": agreement,
        "seconds": round(time.time() - started, 1),
    }
    rows = [{"item_id": it["item_id"], **{m: answers[m][i] for m in answers if i < len(answers[m])}} for i, it in enumerate(items)]
    return metrics, rows


def mlx_greedy_tokens(model, tokens: Sequence[int], n: int) -> list[int]:
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    out = []
    for tok, _ in generate_step(mx.array(list(tokens)), model, max_tokens=n, sampler=lambda lp: mx.argmax(lp, axis=-1)):
        out.append(int(tok))
    return out


# Largest gap, in nats, between MLX's top token and llama.cpp's greedy pick that still counts as
# a tie broken by rounding. Measured on the embedded model's f16 GGUF against the float32 fused
# model: the 20 likeliest tokens' log-probabilities differ by up to 0.017 nats (median 0.003),
# so two of them can swap places when they lie up to ~0.035 apart. A wrong rope base costs whole
# nats. bf16 and quantized GGUFs round more coarsely: their gaps include that, reported as is.
TIE_NATS = 0.05


def mlx_gaps(model, tokens: Sequence[int], continuation: Sequence[int]) -> list[float]:
    """For each token of `continuation` after `tokens`: how many nats below MLX's own top token MLX
    rates it (0: MLX's greedy pick too). One teacher-forced pass along the other engine's path."""
    import mlx.core as mx

    seq = list(tokens) + list(continuation)
    logits = model(mx.array([seq]))[0, len(tokens) - 1 : len(seq) - 1].astype(mx.float32)
    # A difference of log-probabilities at one position is the difference of its logits.
    picked = mx.take_along_axis(logits, mx.array(list(continuation))[:, None], axis=-1)[:, 0]
    return [round(float(x), 5) for x in np.array(logits.max(axis=-1) - picked)]


def greedy_agreement(llm, fused_dir: Path, prompts: Sequence[str], n_tokens: int) -> dict:
    """Same prompt ids into both engines: prompts whose first n greedy tokens are identical, and,
    along llama.cpp's tokens, the largest gap below MLX's top token. Two correct engines part
    only at near ties (gap under TIE_NATS) and then write different but equally likely text;
    a wrong GGUF key shows as a gap of whole nats, so `consistent` counts prompts under it."""
    from mlx_lm import load as mlx_load

    from blogtune.model.convert import rope_overrides

    model, _ = mlx_load(str(fused_dir), model_config=rope_overrides(Path(fused_dir)))
    per_prompt = []
    for text in prompts:
        ids = prompt_ids(llm, text)
        a, b = greedy_tokens(llm, ids, n_tokens), mlx_greedy_tokens(model, ids, n_tokens)
        same = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        gap = max(mlx_gaps(model, ids, a), default=0.0)
        per_prompt.append({"llama_cpp": a, "mlx": b, "agree_prefix": same, "max_gap_nats": gap})
    return {
        "prompts": len(per_prompt),
        "tokens": n_tokens,
        "identical": sum(p["agree_prefix"] == n_tokens for p in per_prompt),
        "consistent": sum(p["max_gap_nats"] <= TIE_NATS for p in per_prompt),
        "max_gap_nats": max((p["max_gap_nats"] for p in per_prompt), default=0.0),
        "tie_nats": TIE_NATS,
        "per_prompt": per_prompt,
    }
