"""The exam in the report: headline numbers for metrics.json, a before/after table and a plot
per exam kind with intervals, stop rates in MLX and llama.cpp, and items side by side."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from blogtune.report.pages import esc, page, table

MODELS = {"base": "Base model", "finetuned": "Fine-tuned"}


def _pct(r: Mapping | None) -> str:
    if not r or r.get("rate") is None:
        return "n/a"
    lo, hi = r["ci"]
    return f"{100 * r['rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] (n={r['n']})"


def _lift(r: Mapping | None) -> str:
    if not r or r.get("lift") is None:
        return "n/a"
    lo, hi = r["ci"]
    return f"{100 * r['lift']:+.1f} pts [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def headline(exam: Mapping[str, Any], gguf: Mapping[str, Any] | None) -> dict[str, Any]:
    """The exam's key numbers for metrics.json (trained posts' cloze multiple choice first)."""
    train = exam.get("splits", {}).get("train", {})
    mc = train.get("multiple_choice", {}).get("cloze", {})
    sa = train.get("short_answer", {})
    out: dict[str, Any] = {
        "items": exam.get("items"),
        "cloze_multiple_choice": {
            k: mc.get(k) for k in ("items", "chance", "base", "finetuned", "lift", "lift_on_base_wrong")
        },
        "short_answer": {
            kind: {w: {k: v[w][k] for k in ("exact_match", "token_f1", "stop_rate", "loop_rate")} for w in MODELS}
            | {"exact_match_lift": v.get("exact_match_lift")}
            for kind, v in sa.items()
            if ":" not in kind
        },
        "stop_rate_mlx": exam.get("stop_rate"),
        "stop_rate_mlx_by_lang": exam.get("stop_rate_by_lang"),
        "loop_rate_mlx": exam.get("loop_rate"),
        "heldout_answers_anyway": exam.get("heldout_answers_anyway"),
        "seconds": exam.get("seconds"),
    }
    if gguf:
        out["llama_cpp"] = {"status": gguf.get("status")}
        if gguf.get("status") == "ok":
            out["llama_cpp"] |= {
                "stop_rate": {m: v["stop_rate"] for m, v in gguf["all"].items()},
                "exact_match": {m: v["exact_match"] for m, v in gguf["all"].items()},
                "stop_rate_by_lang": gguf.get("stop_rate_by_lang"),
                "sampling": gguf.get("sampling"),
                "greedy_agreement_with_mlx": {k: gguf["greedy_agreement_with_mlx"][k] for k in ("prompts", "tokens", "identical", "consistent", "max_gap_nats", "tie_nats") if k in gguf["greedy_agreement_with_mlx"]},
            }
    return out


def agreement_label(ag: Mapping[str, Any]) -> str:
    """"2/3 prompts identical; 3/3 within 0.05 nats of MLX's top token at every step (largest gap
    0.0018 nats)": where the engines part, was it a near tie (rounding) or a real difference?"""
    text = f"{ag['identical']}/{ag['prompts']} prompts identical"
    if "consistent" not in ag:  # metrics written before the gap was measured
        return text
    return f"{text}; {ag['consistent']}/{ag['prompts']} within {ag['tie_nats']:g} nats of MLX's top token at every step (largest gap {ag['max_gap_nats']:.3g} nats)"


def sampling_label(sampling: dict) -> str:
    """The settings llama.cpp sampled with, as Ollama applies them (the penalty's window opens
    on the prompt's last tokens: Ollama and llama-server pass the prompt through the sampler)."""
    last_n = sampling.get("repeat_last_n", 64)
    window = {-1: "over the whole context", 0: "off (repeat_last_n 0)"}.get(last_n, f"over the last {last_n} tokens, the prompt's included")
    return (f"temperature {sampling.get('temperature')}, top_p {sampling.get('top_p')}, top_k {sampling.get('top_k')}, "
            f"repeat_penalty {sampling.get('repeat_penalty')} {window}")


def exam_page(exam: Mapping[str, Any], gguf: Mapping[str, Any] | None, rows: Sequence[Mapping], sample: int = 12) -> str:
    body = []
    for split, label in (("train", "Posts the model was trained on (the exam)"), ("test", "Held-out posts (unknowable: for reference)")):
        s = exam.get("splits", {}).get(split, {})
        mc_rows = [
            [kind, v["items"], _pct(v["base"]), _pct(v["finetuned"]), _lift(v["lift"]), _pct(v["lift_on_base_wrong"]), f"{100 * (v['chance'] or 0):.0f}%"]
            for kind, v in s.get("multiple_choice", {}).items()
        ]
        body.append(f"<h2>{esc(label)}</h2><h3>Multiple choice (log-likelihood of 4 options)</h3>")
        body.append(table(["kind", "items", "base", "fine-tuned", "lift", "right after, of base-wrong", "chance"], mc_rows))
        sa_rows = []
        for kind, v in s.get("short_answer", {}).items():
            for w, name in MODELS.items():
                m = v[w]
                sa_rows.append([kind, name, v["items"], _pct(m["exact_match"]), f"{m['token_f1']['mean'] or 0:.3f}", _pct(m["stop_rate"]), _pct(m["loop_rate"]), _pct(m["abstain_rate"])])
        body.append("<h3>Short answer (greedy)</h3>")
        body.append(table(["kind", "model", "items", "exact match", "token F1", "stop rate", "n-gram loops", "says it does not know"], sa_rows))
    stop = [["MLX, greedy", _pct(exam.get("stop_rate", {}).get("base")), _pct(exam.get("stop_rate", {}).get("finetuned"))]]
    langs = exam.get("stop_rate_by_lang") or {}
    if len(langs) > 1:  # one row per language: a weaker language does not hide in the total
        stop += [[f"MLX, greedy, {lang} items", _pct(v["base"]), _pct(v["finetuned"])] for lang, v in langs.items()]
    if gguf and gguf.get("status") == "ok":
        if gguf.get("sampling"):
            stop.append(["llama.cpp GGUF: the Modelfile's sampling", "", sampling_label(gguf["sampling"])])
        for mode, v in gguf["all"].items():
            items = f", {v['answers']} items" if mode == "greedy" else ""
            stop.append([f"llama.cpp GGUF (fine-tuned), {mode.replace('_', ' ')}{items}", "", f"{_pct(v['stop_rate'])}; exact match {_pct(v['exact_match'])}"])
        g_langs = gguf.get("stop_rate_by_lang") or {}
        if len(g_langs) > 1:
            stop += [[f"llama.cpp GGUF (fine-tuned), modelfile sampling, {lang} items", "", _pct(v)] for lang, v in g_langs.items()]
        vs = gguf.get("greedy_vs_mlx_exam")
        if vs:
            stop.append([f"greedy, the same {vs['items']} items: llama.cpp = MLX", "", f"same ending {vs['same_finish']}/{vs['items']}, same text {vs['identical_text']}/{vs['items']} (MLX stop rate on them {_pct(vs['mlx_stop_rate'])})"])
        ag = gguf["greedy_agreement_with_mlx"]
        stop.append([f"greedy tokens llama.cpp = MLX (fused), first {ag['tokens']}", "", agreement_label(ag)])
    elif gguf:
        stop.append(["llama.cpp GGUF", "", gguf.get("status")])
    body.append("<h2>Stop rate: answers that end at the end-of-turn token within their budget (max(exam.max_tokens, exam.answer_room × the reference answer's tokens))</h2>")
    body.append(table(["engine", "base", "fine-tuned"], stop))
    shown = [r for r in rows if "answer" in r["base"]][:sample]
    body.append("<h2>Sample of items, both models side by side</h2>")
    body.append(table(
        ["post · kind · split", "question", "reference", "base (how it ended)", "fine-tuned (how it ended)"],
        [[f"{r['title']} · {r['kind']} · {r['split']}", r["question"], r["answer"],
          f"{r['base']['answer']} [{r['base']['finish']}]", f"{r['finetuned']['answer']} [{r['finetuned']['finish']}]"] for r in shown],
    ))
    return page("The exam: does the model know its posts?", "\n".join(body), note="95% intervals: Wilson for rates, paired bootstrap for lifts.")


def plot_exam(exam: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Accuracy per exam kind, base vs fine-tuned, with 95% intervals (trained posts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = exam.get("splits", {}).get("train", {})
    bars = [(f"MC {k}", v["base"], v["finetuned"]) for k, v in s.get("multiple_choice", {}).items()]
    bars += [(f"EM {k}", v["base"]["exact_match"], v["finetuned"]["exact_match"]) for k, v in s.get("short_answer", {}).items()]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(bars) + 2), 4))
    for j, (name, color) in enumerate((("base", "tab:gray"), ("fine-tuned", "tab:blue"))):
        xs = [i + (j - 0.5) * 0.38 for i in range(len(bars))]
        vals = [(b if j == 0 else f) for _, b, f in bars]
        ys = [v["rate"] or 0 for v in vals]
        # max(0, ...): at a rate of 0 or 1 the Wilson bound equals it up to rounding.
        err = [
            [max(0.0, y - (v["ci"][0] if v["ci"][0] is not None else y)) for y, v in zip(ys, vals, strict=True)],
            [max(0.0, (v["ci"][1] if v["ci"][1] is not None else y) - y) for y, v in zip(ys, vals, strict=True)],
        ]
        ax.bar(xs, ys, 0.38, yerr=err, capsize=3, color=color, label=name)
    ax.axhline(0.25, color="tab:red", ls="--", lw=1, label="chance (MC)")
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (95% CI)")
    ax.set_title("Exam on trained posts: base vs fine-tuned")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from blogtune.io_utils import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
