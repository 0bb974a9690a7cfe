"""Report pages, plots, metrics.json, and `snakemake --report` over the evaluate/report rules.

The workflow test builds a small Snakefile in a temp dir: stub upstream rules whose outputs
already exist (tiny real model, random LoRA adapters, hand-made data), plus this repo's
rules/evaluate.smk, scripts and captions, so `evaluate` and `report_assets` run for real.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from blogtune.io_utils import atomic_write_json, atomic_write_jsonl
from blogtune.report import pages, plots

REPO = Path(__file__).resolve().parents[1]
EVIL = "<script>alert('x')</script>"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_escaped(html: str) -> None:
    assert "<script" not in html.lower(), "unescaped <script> in a page"
    assert "&lt;script&gt;" in html


# --------------------------------------------------------------------------- pages


def eval_metrics() -> dict:
    def split(b, f, samples=3):
        import math

        return {
            "samples": samples,
            "articles": 2,
            "tokens": 120,
            "base": {"loss": b, "perplexity": math.exp(b)},
            "finetuned": {"loss": f, "perplexity": math.exp(f)},
            "loss_change": (f - b) / b,
            "perplexity_change": (math.exp(f) - math.exp(b)) / math.exp(b),
        }

    return {
        "evaluated_at": "2026-01-01T00:00:00+0000",
        "settings": {"mask_prompt": True, "max_seq_length": 512, "max_tokens": 8},
        "splits": {"test": split(3.0, 2.5), "valid": split(3.1, 2.6, 1), "train_sample": split(3.0, 1.0)},
        "data": {
            "train": {"samples": 10, "tokens": 1000, "max_tokens": 130, "truncated": 1},
            "valid": {"samples": 1, "tokens": 100, "max_tokens": 100, "truncated": 0},
            "test": {"samples": 3, "tokens": 300, "max_tokens": 120, "truncated": 0},
        },
        "generation": {
            "base": {
                "answers": 2,
                "stopped": 1,
                "hit_limit": 1,
                "with_template_tokens": 1,
                "mean_tokens": 5.0,
            },
            "finetuned": {
                "answers": 2,
                "stopped": 2,
                "hit_limit": 0,
                "with_template_tokens": 0,
                "mean_tokens": 4.0,
            },
        },
    }


def per_article_frame() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "split": "test",
                "article_id": "t1",
                "title": EVIL,
                "samples": 2,
                "tokens": 80,
                "base_loss": 3.0,
                "finetuned_loss": 2.0,
                "base_perplexity": 20.1,
                "finetuned_perplexity": 7.4,
                "loss_change": -1 / 3,
            },
            {
                "split": "test",
                "article_id": "t2",
                "title": "Worse & worse",
                "samples": 1,
                "tokens": 40,
                "base_loss": 2.0,
                "finetuned_loss": 2.5,
                "base_perplexity": 7.4,
                "finetuned_perplexity": 12.2,
                "loss_change": 0.25,
            },
            {
                "split": "train_sample",
                "article_id": "a1",
                "title": "Trained",
                "samples": 2,
                "tokens": 60,
                "base_loss": 3.0,
                "finetuned_loss": 1.0,
                "base_perplexity": 20.1,
                "finetuned_perplexity": 2.7,
                "loss_change": -2 / 3,
            },
        ]
    )


def generations() -> list[dict]:
    answer = {
        "text": f"Sure: {EVIL} <|im_start|>user",
        "tokens": 8,
        "finish": "length",
        "stop_token": None,
        "template_tokens": ["<|im_start|>"],
        "seconds": 0.1,
        "hit_limit": True,
    }
    stopped = {
        "text": "A clean answer.",
        "tokens": 3,
        "finish": "stop",
        "stop_token": "<|im_end|>",
        "template_tokens": [],
        "seconds": 0.1,
        "hit_limit": False,
    }
    return [
        {
            "prompt_id": "config-1",
            "source": "config",
            "prompt": f"What is {EVIL}?",
            "article_id": None,
            "title": None,
            "heading": None,
            "reference": None,
            "base": answer,
            "finetuned": stopped,
        },
        {
            "prompt_id": "heldout-1",
            "source": "heldout",
            "prompt": "Write part 1",
            "article_id": "t1",
            "title": EVIL,
            "heading": "<img src=x onerror=alert(1)>",
            "reference": f"Post text {EVIL}",
            "base": stopped,
            "finetuned": answer,
        },
    ]


def test_generations_page_escapes_titles_prompts_and_answers():
    html = pages.generations_page(generations(), max_tokens=8)
    assert_escaped(html)
    assert "<img" not in html and "&lt;img src=x" in html
    assert "&lt;|im_start|&gt;" in html and "<|im_" not in html
    assert "hit the token limit (8)" in html and "ended on &lt;|im_end|&gt;" in html
    assert "template token &lt;|im_start|&gt;" in html
    assert html.count('class="gen"') == 2 and "Held-out post text" in html


def test_per_article_page_sorts_and_counts_and_escapes():
    html = pages.per_article_page(per_article_frame())
    assert_escaped(html)
    assert "Worse &amp; worse" in html
    assert html.index("t1") < html.index("t2")  # most improved first within the split
    assert '<tr class="worse">' in html and '<tr class="better">' in html
    assert "-33.3%" in html and "+25.0%" in html
    assert "No articles" in pages.per_article_page(per_article_frame().iloc[0:0])


def test_before_after_page_lists_every_split_with_relative_change():
    html = pages.before_after_page(eval_metrics())
    for label in ("test (held-out articles)", "validation", "training sample"):
        assert label in html
    assert "-16.7%" in html  # test loss 3.0 -> 2.5
    assert "hit the token limit" in html and "mask_prompt=True" in html


def test_corpus_split_and_artefact_pages_escape_post_data(tmp_path):
    articles = pd.DataFrame(
        [
            {
                "article_id": "a",
                "path": "a.md",
                "title": EVIL,
                "date": "2024-01-01",
                "sha256": "x",
                "chars": 10,
                "chunks": 1,
            }
        ]
    )
    rejects = pd.DataFrame([{"path": "<b>bad</b>.md", "reason": EVIL}, {"path": "e.md", "reason": "empty"}])
    html = pages.corpus_page(articles, rejects, [100, 200], eval_metrics()["data"])
    assert_escaped(html)
    assert "&lt;b&gt;bad&lt;/b&gt;.md" in html and "1,400" in html  # tokens over all splits
    stats = pd.DataFrame(
        {
            "split": ["train", "valid", "test", "total"],
            "articles": [3, 1, 1, 5],
            "chunks": [10, 1, 3, 14],
            "characters": [900, 90, 300, 1290],
            "mean_chunk_chars": [90.0, 90.0, 100.0, 92.1],
        }
    )
    dups = pd.DataFrame(
        [
            {
                "split": "test",
                "article_id": "t",
                "part": 1,
                "kept_split": "train",
                "kept_article_id": "a",
                "kept_part": 1,
                "chars": 5,
                "preview": EVIL,
            }
        ]
    )
    html = pages.split_page(stats, dups, eval_metrics()["data"])
    assert_escaped(html)
    assert "1 chunk(s) repeating" in html
    (tmp_path / "d").mkdir()
    (tmp_path / "d/a.bin").write_bytes(b"x" * 2048)
    html = pages.artefacts_page({EVIL: tmp_path / "d", "missing": tmp_path / "nope"})
    assert_escaped(html)
    assert "2.0 KB" in html and "–" in html


def test_exam_page_gives_the_stop_rate_per_language():
    from blogtune.exam.stats import rate
    from blogtune.report import exam_pages

    def r(k, n):
        return rate([True] * k + [False] * (n - k))

    exam = {"stop_rate": {"base": r(2, 10), "finetuned": r(9, 10)}, "stop_rate_by_lang": {"en": {"base": r(1, 6), "finetuned": r(6, 6)}, "zh": {"base": r(1, 4), "finetuned": r(3, 4)}}}
    one = {"answers": 10, "stop_rate": r(8, 10), "exact_match": r(1, 10)}
    sampling = {"temperature": 0.7, "top_p": 0.9, "top_k": 40, "repeat_penalty": 1.1, "repeat_last_n": 64}
    gguf = {"status": "ok", "sampling": sampling, "all": {"modelfile_sampling": one}, "stop_rate_by_lang": {"en": r(6, 6), "zh": r(2, 4)}, "greedy_agreement_with_mlx": {"prompts": 3, "tokens": 16, "identical": 3}}
    html = exam_pages.exam_page(exam, gguf, [])
    assert "repeat_penalty 1.1 over the last 64 tokens, the prompt&#x27;s included" in html
    assert "MLX, greedy, zh items</td><td>25.0% [4.6, 69.9] (n=4)</td><td>75.0%" in html
    assert "modelfile sampling, zh items</td><td></td><td>50.0%" in html
    assert exam_pages.headline(exam, gguf)["stop_rate_mlx_by_lang"]["en"]["finetuned"]["k"] == 6
    assert exam_pages.headline(exam, gguf)["llama_cpp"]["sampling"] == sampling
    assert exam_pages.sampling_label({**sampling, "repeat_last_n": 0}).endswith("repeat_penalty 1.1 off (repeat_last_n 0)")
    alone = exam_pages.exam_page({**exam, "stop_rate_by_lang": {"en": exam["stop_rate_by_lang"]["en"]}}, None, [])
    assert "en items" not in alone  # one language: the total says it all
    assert "3/3 prompts identical</td>" in html  # metrics from before the gap check: as they were
    ag = {"prompts": 3, "tokens": 16, "identical": 2, "consistent": 3, "max_gap_nats": 0.0019, "tie_nats": 0.05}
    html = exam_pages.exam_page(exam, {**gguf, "greedy_agreement_with_mlx": ag}, [])
    assert "2/3 prompts identical; 3/3 within 0.05 nats of MLX&#x27;s top token at every step (largest gap 0.0019 nats)" in html
    assert exam_pages.headline(exam, {**gguf, "greedy_agreement_with_mlx": {**ag, "per_prompt": []}})["llama_cpp"]["greedy_agreement_with_mlx"] == ag


def test_formatting_helpers():
    assert pages.fmt_num(48032.19) == "48,032" and pages.fmt_num(10.7796) == "10.78"
    assert (
        pages.fmt_num(None) == "–"
        and pages.fmt_num(float("nan")) == "–"
        and pages.fmt_num(0.01234) == "0.0123"
    )
    assert pages.fmt_pct(-0.1667) == "-16.7%" and pages.fmt_bytes(3 * 1024**3) == "3.0 GB"


def loss_frame() -> pd.DataFrame:
    rows = [{"step": 0, "split": "valid", "loss": 3.0, "elapsed_s": 1.0}]
    for step in range(1, 11):
        rows.append(
            {
                "step": step,
                "split": "train",
                "loss": 3.0 - 0.1 * step,
                "learning_rate": 1e-4 * step / 10,
                "tokens_per_second": 900 + step,
                "trained_tokens": 100 * step,
                "peak_memory_gb": 0.5,
                "elapsed_s": 1.0 + step,
            }
        )
    rows.append({"step": 10, "split": "valid", "loss": 2.5, "elapsed_s": 12.0})
    return pd.DataFrame(rows)


def test_run_metrics_combines_eval_training_and_hashes(tmp_path):
    loss_csv = tmp_path / "loss.csv"
    loss_frame().to_csv(loss_csv, index=False)
    m = pages.run_metrics(
        base_model="embedded",
        model_slug="tiny",
        data_hash="d1",
        config_hash="c1",
        eval_metrics=eval_metrics(),
        loss=plots.read_loss_csv(loss_csv),
        train_summary={"iters": 10},
        corpus={"posts_selected": 1},
    )
    assert (m["data_hash"], m["config_hash"], m["base_model"]) == ("d1", "c1", "embedded")
    assert m["splits"]["test"]["loss_before"] == 3.0 and m["splits"]["test"]["loss_after"] == 2.5
    assert m["train"]["seconds"] == 12.0 and m["train"]["tokens_per_second"] == pytest.approx(905.5)
    assert m["train"]["peak_memory_gb"] == 0.5 and m["train"]["base_valid_loss"] == 3.0
    assert m["train"]["final_valid_loss"] == 2.5 and m["evaluated_at"].startswith("2026")
    json.dumps(m, allow_nan=False)


# --------------------------------------------------------------------------- plots


def test_plots_are_written_and_non_empty(tmp_path):
    loss = loss_frame()
    outs = [
        plots.plot_loss(loss, tmp_path / "loss.png"),
        plots.plot_learning_rate(loss, tmp_path / "lr.png"),
        plots.plot_throughput(loss, tmp_path / "tps.png"),
        plots.plot_chunk_lengths([100, 400, 800, 1000, 50] * 4, tmp_path / "chunks.png", limit=1024),
        plots.plot_article_perplexity(per_article_frame(), tmp_path / "ppl.png"),
        # Empty inputs still make a figure (saying so) instead of failing the report.
        plots.plot_loss(loss.iloc[0:0], tmp_path / "loss_empty.png"),
        plots.plot_chunk_lengths([], tmp_path / "chunks_empty.png"),
        plots.plot_article_perplexity(per_article_frame().iloc[0:0], tmp_path / "ppl_empty.png"),
    ]
    for path in outs:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, path
    assert not list(tmp_path.glob(".*.tmp"))


# --------------------------------------------------------------------------- snakemake --report

STUB_SNAKEFILE = """
configfile: "config.yaml"

report: "report/workflow.rst"

MODEL_SLUG = "tiny"

def data_path(name):
    return f"results/data/{name}"

def model_path(name):
    return f"results/{MODEL_SLUG}/{name}"

def log_path(stage):
    return f"logs/{stage}/{MODEL_SLUG}.log"

def config_hash():
    return "cfg0123"

def data_hash():
    return "data0123"

def all_cores():
    return 2

# Stubs of the upstream rules: their outputs exist already; running one is an error.
rule chunk:
    output: chunks=data_path("chunks.jsonl"), articles=data_path("articles.tsv"), rejects=data_path("rejects.tsv")
    shell: "exit 1"

rule split:
    output: train=data_path("split/train.jsonl"), valid=data_path("split/valid.jsonl"), test=data_path("split/test.jsonl"), stats=data_path("split/stats.tsv"), duplicates=data_path("split/duplicates.tsv")
    shell: "exit 1"

rule convert:
    output: model=directory(model_path("mlx_base"))
    shell: "exit 1"

rule format:
    output: train=model_path("data/train.jsonl"), valid=model_path("data/valid.jsonl"), test=model_path("data/test.jsonl")
    shell: "exit 1"

rule train:
    output: adapters=directory(model_path("train/adapters")), loss_csv=model_path("train/loss.csv"), summary=model_path("train/summary.json")
    shell: "exit 1"

rule fuse:
    output: model=directory(model_path("fused"))
    shell: "exit 1"

rule export_gguf:
    output: gguf=model_path("gguf/tiny.gguf")
    shell: "exit 1"

rule modelfile:
    output: modelfile=model_path("gguf/Modelfile")
    shell: "exit 1"

rule exam:
    output: metrics=model_path("exam/exam_metrics.json"), rows=model_path("exam/exam_items.jsonl")
    shell: "exit 1"

rule exam_gguf:
    output: metrics=model_path("exam/gguf_metrics.json"), rows=model_path("exam/gguf_answers.jsonl")
    shell: "exit 1"

include: "rules/evaluate.smk"

rule all:
    default_target: True
    input: rules.report_assets.output
"""

STUB_CONFIG = {
    "base_model": "tiny-test-model",
    "chunk": {"max_chars": 400},
    "train": {"mask_prompt": True, "max_seq_length": 256},
    "evaluate": {
        "prompts": [f"Explain {EVIL}"],
        "max_tokens": 6,
        "temperature": 0.0,
        "top_p": 1.0,
        "seed": 0,
        "heldout_prompts": 2,
        "train_sample_articles": 2,
        "batch_size": 4,
    },
}


def random_lora_adapters(model_dir: Path, out: Path) -> Path:
    """mlx-lm LoRA layers with random (non-zero) B matrices, saved in mlx_lm.lora's layout."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model, _ = load(str(model_dir))
    model.freeze()
    lora = {"rank": 4, "scale": 10.0, "dropout": 0.0}
    linear_to_lora_layers(model, 2, lora)
    mx.random.seed(0)
    weights = {
        k: (mx.random.normal(v.shape) * 0.02 if k.endswith("lora_b") else v)
        for k, v in tree_flatten(model.trainable_parameters())
    }
    out.mkdir(parents=True)
    mx.save_safetensors(str(out / "adapters.safetensors"), weights)
    (out / "adapter_config.json").write_text(
        json.dumps(
            {
                "fine_tune_type": "lora",
                "num_layers": 2,
                "lora_parameters": lora,
                "mask_prompt": True,
                "max_seq_length": 256,
            }
        )
    )
    return out


def write_inputs(work: Path, mlx_model: Path) -> None:
    rng = random.Random(0)
    words = "postgres index vacuum table query planner btree lock wal replica".split()
    d, m = work / "results/data", work / "results/tiny"
    articles = [
        ("2024/a1", "First post"),
        ("2024/a2", "Second post"),
        ("2024/a3", "Third post"),
        ("2024/t1", EVIL),
        ("2024/v1", "Valid & sound"),
    ]
    chunks = []
    for aid, title in articles:
        for part in (1, 2):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(8, 30)))
            chunks.append(
                {
                    "article_id": aid,
                    "title": title,
                    "heading_path": ["Intro"],
                    "part": part,
                    "parts": 2,
                    "text": text,
                }
            )
    atomic_write_jsonl(d / "chunks.jsonl", chunks)
    pd.DataFrame(
        [
            {
                "article_id": a,
                "path": f"{a}.md",
                "title": t,
                "date": "2024-01-01",
                "sha256": "0" * 8,
                "chars": 100,
                "chunks": 2,
            }
            for a, t in articles
        ]
    ).to_csv(d / "articles.tsv", sep="\t", index=False)
    pd.DataFrame(
        [{"path": "2024/draft.md", "reason": "draft: true"}, {"path": f"{EVIL}.md", "reason": "empty"}]
    ).to_csv(d / "rejects.tsv", sep="\t", index=False)
    split_of = {"2024/t1": "test", "2024/v1": "valid"}
    by_split: dict[str, list] = {"train": [], "valid": [], "test": []}
    for c in chunks:
        by_split[split_of.get(c["article_id"], "train")].append(c)
    for s, rows in by_split.items():
        atomic_write_jsonl(d / f"split/{s}.jsonl", rows)
        formatted = [
            {
                "messages": [
                    {
                        "role": "user",
                        "content": f'Write part {c["part"]} of {c["parts"]} of my blog post "{c["title"]}".',
                    },
                    {"role": "assistant", "content": c["text"]},
                ],
                "article_id": c["article_id"],
                "title": c["title"],
                "heading": "Intro",
                "part": c["part"],
                "parts": c["parts"],
            }
            for c in rows
        ]
        atomic_write_jsonl(m / f"data/{s}.jsonl", formatted)
    pd.DataFrame(
        {
            "split": ["train", "valid", "test", "total"],
            "articles": [3, 1, 1, 5],
            "chunks": [6, 2, 2, 10],
            "characters": [600, 200, 200, 1000],
            "mean_chunk_chars": [100.0] * 4,
        }
    ).to_csv(d / "split/stats.tsv", sep="\t", index=False)
    pd.DataFrame(
        columns=[
            "split",
            "article_id",
            "part",
            "kept_split",
            "kept_article_id",
            "kept_part",
            "chars",
            "preview",
        ]
    ).to_csv(d / "split/duplicates.tsv", sep="\t", index=False)
    shutil.copytree(mlx_model, m / "mlx_base")
    random_lora_adapters(m / "mlx_base", m / "train/adapters")
    loss_frame().to_csv(m / "train/loss.csv", index=False)
    (m / "train/summary.json").write_text(json.dumps({"iters": 10, "train_seconds": 11.0}))
    (m / "fused").mkdir()
    (m / "fused/model.safetensors").write_bytes(b"\0" * 4096)
    (m / "gguf").mkdir()
    (m / "gguf/tiny.gguf").write_bytes(b"GGUF" + b"\0" * 1000)
    (m / "gguf/Modelfile").write_text("FROM ./tiny.gguf\n")
    write_exam_outputs(m)


def write_exam_outputs(m: Path) -> None:
    """Exam results as blogtune.exam.run computes them, from made-up per-item outcomes."""
    from blogtune.exam.run import ExamSettings, exam_metrics

    rows = []
    for i in range(20):
        row = {"item_id": f"c{i}", "kind": "cloze:number", "source": "cloze", "split": "train" if i < 16 else "test",
               "title": EVIL, "heading": "h", "question": f"Q{i} {EVIL}", "answer": str(i), "options": ["a", "b", "c", "d"], "answer_index": 0}
        for which, right in (("base", i % 4 == 0), ("finetuned", i % 4 != 3)):
            row[which] = {"mc_correct": right, "mc_chosen": 0 if right else 1, "answer": str(i) if right else "?",
                          "tokens": 2, "finish": "stop" if i % 5 else "length", "loop": False, "exact": right, "f1": float(right), "abstain": False}
        rows.append(row)
    atomic_write_json(m / "exam/exam_metrics.json", exam_metrics(rows, ExamSettings()))
    atomic_write_jsonl(m / "exam/exam_items.jsonl", rows)
    atomic_write_json(m / "exam/gguf_metrics.json", {"status": "skipped: llama-cpp-python not installed"})
    atomic_write_jsonl(m / "exam/gguf_answers.jsonl", [])


def run_snakemake(work: Path, *args: str, cores: int | None = 2) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-d",
            str(work),
            "-s",
            str(work / "Snakefile"),
            *(["--cores", str(cores)] if cores else []),
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, f"snakemake {args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def embedded_html(report: str, name: str) -> str:
    """The HTML page `name` as embedded (base64 data URI) in Snakemake's self-contained report."""
    for payload in re.findall(r"data:text/html[^,\"']*;base64,([A-Za-z0-9+/=]+)", report):
        text = base64.b64decode(payload).decode("utf-8", errors="replace")
        if f"<title>{name}</title>" in text:
            return text
    raise AssertionError(f"page {name!r} not embedded in the report")


@pytest.fixture(scope="module")
def mlx_model(tiny_llama, tmp_path_factory) -> Path:
    from mlx_lm import convert

    out = tmp_path_factory.mktemp("report_mlx") / "mlx"
    convert(str(tiny_llama), str(out), dtype="float32")
    return out


def test_snakemake_report_from_the_evaluate_rules(tmp_path, mlx_model):
    import yaml

    work = tmp_path / "wf"
    (work / "rules").mkdir(parents=True)
    shutil.copy2(REPO / "rules/evaluate.smk", work / "rules/evaluate.smk")
    shutil.copytree(REPO / "report", work / "report")
    shutil.copytree(REPO / "envs", work / "envs")
    shutil.copytree(REPO / "scripts", work / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    (work / "Snakefile").write_text(STUB_SNAKEFILE)
    (work / "config.yaml").write_text(yaml.safe_dump(STUB_CONFIG))
    write_inputs(work, mlx_model)

    proc = run_snakemake(work)
    out = work / "results/tiny"
    log = (work / "logs/evaluate/tiny.log").read_text()
    assert "base · test" in log and "finetuned · train_sample" in log and "ETA" in log
    metrics = json.loads((out / "report/metrics.json").read_text())
    assert metrics["data_hash"] == "data0123" and metrics["config_hash"] == "cfg0123"
    assert set(metrics["splits"]) == {"test", "valid", "train_sample"}
    assert metrics["splits"]["test"]["samples"] == 2 and metrics["train"]["seconds"] == 12.0
    assert metrics["corpus"]["posts_selected"] == 5 and metrics["corpus"]["posts_skipped"] == 2
    gens = [json.loads(line) for line in (out / "eval/generations.jsonl").read_text().splitlines()]
    assert [g["source"] for g in gens] == ["config", "heldout", "heldout"]  # 2 parts of 1 test post
    assert "job" in proc.stdout + proc.stderr

    report = work / "report.html"
    run_snakemake(work, "--report", str(report), cores=None)
    text = report.read_text()
    for caption_words in ("Before / after", "2. Training", "3. Data", "held-out articles (never trained on)"):
        assert caption_words in text, caption_words
    assert len(re.findall(r"data:image/png[^,\"]*;base64,", text)) == 6
    exam_page = embedded_html(text, "The exam: does the model know its posts?")
    assert_escaped(exam_page)
    assert "skipped: llama-cpp-python not installed" in exam_page and "+50.0 pts" in exam_page
    assert list(metrics)[0] == "exam" and metrics["exam"]["cloze_multiple_choice"]["finetuned"]["k"] == 12
    gen_page = embedded_html(text, "Generations side by side")
    assert_escaped(gen_page)
    assert "Explain &lt;script&gt;" in gen_page and "hit the token limit (6)" in gen_page
    corpus = embedded_html(text, "Corpus")
    assert_escaped(corpus)
    assert "Valid &amp; sound" in embedded_html(text, "Per-article change") or "Valid &amp; sound" in corpus
    before_after = embedded_html(text, "Before / after fine-tuning")
    assert "test (held-out articles)" in before_after
