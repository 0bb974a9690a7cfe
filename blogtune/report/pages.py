"""Small HTML pages for Snakemake's report, and the per-run metrics.json.

Snakemake shows each HTML result in an iframe, so every page is a complete little document with
inline CSS and no scripts. Every string that comes from posts, config or model output goes
through `esc` (html.escape): a post titled `<script>` or a model that answers with markup must
show up as text, never run.

Over 400 lines on purpose: one small function per report page, all sharing `esc` and the page
shell; splitting them by page would scatter that one escaping rule.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

SPLIT_LABELS = {"test": "test (held-out articles)", "valid": "validation", "train_sample": "training sample"}
MODEL_LABELS = {"base": "Base model", "finetuned": "Fine-tuned"}

CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,sans-serif;font-size:14px;
 color:#222;margin:16px;line-height:1.4}
h1{font-size:18px;margin:0 0 8px} h2{font-size:15px;margin:18px 0 6px}
p.note{color:#555;margin:4px 0 12px}
table{border-collapse:collapse;margin:6px 0 14px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f4f6} td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.better td.chg{color:#15803d;font-weight:600} tr.worse td.chg{color:#b91c1c;font-weight:600}
.gen{border:1px solid #ddd;border-radius:6px;padding:10px;margin:0 0 16px}
.gen .prompt{background:#f9fafb;padding:6px 8px;border-radius:4px;margin:4px 0 8px;white-space:pre-wrap}
.cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(240px,1fr));gap:10px}
.cols pre{white-space:pre-wrap;word-break:break-word;background:#fcfcfc;border:1px solid #eee;
 padding:6px;margin:4px 0;max-height:420px;overflow:auto;font-size:12.5px}
.cols pre.empty{color:#888;font-style:italic}
.badge{display:inline-block;border-radius:10px;padding:1px 8px;font-size:12px;margin:0 4px 2px 0}
.ok{background:#dcfce7;color:#166534} .warn{background:#fef3c7;color:#92400e}
.bad{background:#fee2e2;color:#991b1b} .info{background:#e0e7ff;color:#3730a3}
""".strip()


def esc(value: Any) -> str:
    """The one escaping point: anything shown in a page goes through here."""
    return html.escape("" if value is None else str(value), quote=True)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt_num(value: Any, digits: int = 3) -> str:
    if _missing(value):
        return "–"
    if isinstance(value, (int,)) and not isinstance(value, bool):
        return f"{value:,}"
    value = float(value)
    if math.isinf(value):
        return "∞"
    if value.is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.{digits}f}".rstrip("0").rstrip(".")


def fmt_pct(value: Any) -> str:
    if _missing(value):
        return "–"
    pct = 100 * float(value)
    return "±0.0%" if abs(pct) < 0.05 else f"{pct:+.1f}%"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "–"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"  # pragma: no cover


def page(title: str, body: str, note: str | None = None) -> str:
    """A complete, script-free HTML document (Snakemake shows it in an iframe)."""
    intro = f'<p class="note">{esc(note)}</p>' if note else ""
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n"
        f"<body><h1>{esc(title)}</h1>{intro}\n{body}\n</body></html>\n"
    )


@dataclass
class Cell:
    """A table cell: text is escaped; `cls` is a CSS class (ours, never user data)."""

    text: Any
    cls: str = ""


def table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], row_classes: Sequence[str] | None = None
) -> str:
    """An HTML table; plain values are escaped, numbers right-aligned."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cells = []
        for value in row:
            cell = value if isinstance(value, Cell) else Cell(value, "num" if _is_number(value) else "")
            text = fmt_num(cell.text) if _is_number(cell.text) else esc(cell.text)
            cells.append(f'<td class="{cell.cls}">{text}</td>' if cell.cls else f"<td>{text}</td>")
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --------------------------------------------------------------------------- corpus / split


def corpus_page(
    articles: pd.DataFrame,
    rejects: pd.DataFrame,
    chunk_chars: Sequence[int],
    data_stats: Mapping[str, Mapping] | None = None,
) -> str:
    """Posts selected, posts skipped (by reason, and each one), chunks, characters, tokens."""
    data_stats = data_stats or {}
    tokens = sum(int(s.get("tokens") or 0) for s in data_stats.values())
    truncated = sum(int(s.get("truncated") or 0) for s in data_stats.values())
    summary = [
        ("Posts selected", len(articles)),
        ("Posts skipped", len(rejects)),
        ("Chunks", len(chunk_chars)),
        ("Characters in chunks", int(sum(chunk_chars))),
        ("Training-format tokens (all splits)", tokens if data_stats else None),
        ("Samples truncated at max_seq_length", truncated if data_stats else None),
    ]
    body = table(["", "value"], summary)
    if len(rejects):
        by_reason = rejects.groupby("reason", sort=True).size().sort_values(ascending=False)
        body += "<h2>Skipped posts by reason</h2>" + table(["reason", "posts"], list(by_reason.items()))
        body += "<h2>Skipped posts</h2>" + table(
            ["path", "reason"], rejects[["path", "reason"]].values.tolist()
        )
    if len(articles):
        cols = [c for c in ("title", "date", "chunks", "chars", "article_id") if c in articles.columns]
        body += "<h2>Selected posts</h2>" + table(cols, articles[cols].values.tolist())
    return page("Corpus", body, "What went into training: the blog posts read, skipped and chunked.")


def split_page(
    stats: pd.DataFrame, duplicates: pd.DataFrame, data_stats: Mapping[str, Mapping] | None = None
) -> str:
    """Split sizes from split/stats.tsv, token counts per split, and cross-split duplicates dropped."""
    data_stats = data_stats or {}
    stats = stats.copy()
    if "split" in stats.columns:
        stats = stats.set_index("split")
    headers = [
        "split",
        "articles",
        "chunks",
        "characters",
        "mean chunk chars",
        "tokens",
        "max sample tokens",
        "truncated",
    ]
    rows = []
    for split, r in stats.iterrows():
        d = data_stats.get(str(split), {})
        if str(split) == "total" and data_stats:
            d = {
                "tokens": sum(int(s.get("tokens") or 0) for s in data_stats.values()),
                "max_tokens": max((s.get("max_tokens") or 0 for s in data_stats.values()), default=None),
                "truncated": sum(int(s.get("truncated") or 0) for s in data_stats.values()),
            }
        rows.append(
            [
                str(split),
                *(_py(r.get(c)) for c in ("articles", "chunks", "characters", "mean_chunk_chars")),
                d.get("tokens"),
                d.get("max_tokens"),
                d.get("truncated"),
            ]
        )
    body = table(headers, rows)
    if len(duplicates):
        cols = [
            c
            for c in ("split", "article_id", "part", "kept_split", "kept_article_id", "preview")
            if c in duplicates.columns
        ]
        body += f"<h2>Dropped: {len(duplicates)} chunk(s) repeating text of an earlier split</h2>" + table(
            cols, duplicates[cols].values.tolist()
        )
    else:
        body += '<p class="note">No valid/test chunk repeats text from the training split.</p>'
    return page(
        "Train / validation / test split",
        body,
        "Split by article (a post never straddles splits); tokens as rendered for training.",
    )


def _py(value: Any) -> Any:
    """numpy scalars -> Python numbers, so formatting treats them as numbers."""
    return value.item() if hasattr(value, "item") else value


# --------------------------------------------------------------------------- before / after


def before_after_page(eval_metrics: Mapping[str, Any]) -> str:
    """Base vs fine-tuned loss and perplexity per split, with the relative change."""
    headers = [
        "split",
        "articles",
        "samples",
        "tokens",
        "base loss",
        "fine-tuned loss",
        "loss change",
        "base perplexity",
        "fine-tuned perplexity",
        "perplexity change",
    ]
    rows, classes = [], []
    for split, m in eval_metrics.get("splits", {}).items():
        change = m.get("perplexity_change")
        classes.append("" if _missing(change) else ("better" if change < 0 else "worse"))
        rows.append(
            [
                SPLIT_LABELS.get(split, split),
                m.get("articles"),
                m.get("samples"),
                m.get("tokens"),
                m["base"].get("loss"),
                m["finetuned"].get("loss"),
                Cell(fmt_pct(m.get("loss_change")), "num chg"),
                m["base"].get("perplexity"),
                m["finetuned"].get("perplexity"),
                Cell(fmt_pct(change), "num chg"),
            ]
        )
    body = table(headers, rows, classes)
    gens = eval_metrics.get("generation", {})
    if gens:
        body += "<h2>Generations</h2>" + table(
            [
                "model",
                "answers",
                "ended on a stop token",
                "hit the token limit",
                "with template tokens",
                "mean tokens",
            ],
            [
                [
                    MODEL_LABELS.get(k, k),
                    g.get("answers"),
                    g.get("stopped"),
                    g.get("hit_limit"),
                    g.get("with_template_tokens"),
                    g.get("mean_tokens"),
                ]
                for k, g in gens.items()
            ],
        )
    settings = eval_metrics.get("settings", {})
    note = (
        "Loss = mean negative log-likelihood per scored token, computed as in training "
        f"(mask_prompt={settings.get('mask_prompt')}, max_seq_length={settings.get('max_seq_length')}); "
        "perplexity = exp(loss). Test articles were never trained on; the training sample shows "
        "memorisation, the gap to test shows generalisation."
    )
    return page("Before / after fine-tuning", body, note)


def per_article_page(per_article: pd.DataFrame, tolerance: float = 0.01) -> str:
    """Every evaluated article: which posts improved, which got worse (relative loss change)."""
    if per_article.empty:
        return page("Per-article change", '<p class="note">No articles were evaluated.</p>')
    df = per_article.copy()
    df["verdict"] = [
        "–" if _missing(c) else ("improved" if c < -tolerance else "worse" if c > tolerance else "unchanged")
        for c in df["loss_change"]
    ]
    order = {split: i for i, split in enumerate(SPLIT_LABELS)}  # test, valid, train_sample
    counts = df.groupby(["split", "verdict"]).size().unstack(fill_value=0)
    summary_rows = [
        [SPLIT_LABELS.get(s, s), *(int(counts.loc[s].get(v, 0)) for v in ("improved", "unchanged", "worse"))]
        for s in sorted(counts.index, key=lambda s: order.get(s, len(order)))
    ]
    body = table(["split", "improved", "unchanged", "worse"], summary_rows)
    df = df.sort_values(
        by=["split", "loss_change"],
        key=lambda col: col.map(lambda s: order.get(s, len(order))) if col.name == "split" else col,
    )
    rows, classes = [], []
    for r in df.itertuples(index=False):
        classes.append({"improved": "better", "worse": "worse"}.get(r.verdict, ""))
        rows.append(
            [
                SPLIT_LABELS.get(r.split, r.split),
                r.title,
                r.article_id,
                _py(r.samples),
                _py(r.tokens),
                _py(r.base_perplexity),
                _py(r.finetuned_perplexity),
                Cell(fmt_pct(r.loss_change), "num chg"),
                r.verdict,
            ]
        )
    body += "<h2>Articles</h2>" + table(
        [
            "split",
            "title",
            "article id",
            "samples",
            "tokens",
            "base perplexity",
            "fine-tuned perplexity",
            "loss change",
            "verdict",
        ],
        rows,
        classes,
    )
    return page(
        "Per-article change",
        body,
        f"Sorted from most improved; 'unchanged' means within ±{100 * tolerance:.0f}% loss.",
    )


def _answer_badges(answer: Mapping[str, Any], max_tokens: int | None) -> str:
    badges = []
    if answer.get("finish") == "stop":
        badges.append(
            f'<span class="badge ok">ended on {esc(answer.get("stop_token") or "stop token")}</span>'
        )
    else:
        limit = f" ({esc(max_tokens)})" if max_tokens else ""
        badges.append(f'<span class="badge warn">hit the token limit{limit}</span>')
    badges.append(f'<span class="badge info">{esc(answer.get("tokens"))} tokens</span>')
    for token in answer.get("template_tokens") or []:
        badges.append(f'<span class="badge bad">template token {esc(token)}</span>')
    return "".join(badges)


def _answer_text(text: str | None) -> str:
    """The answer in a <pre>; an empty or whitespace-only answer says so instead of a blank box."""
    if text and text.strip():
        return f"<pre>{esc(text)}</pre>"
    shown = repr(text or "")
    shown = shown if len(shown) <= 60 else shown[:57] + "…'"
    return f'<pre class="empty">(empty or only whitespace: {esc(shown)})</pre>'


def generations_page(generations: Sequence[Mapping[str, Any]], max_tokens: int | None = None) -> str:
    """Each prompt with the base and fine-tuned answers side by side (and the held-out text)."""
    if not generations:
        return page("Generations", '<p class="note">No prompts configured and no held-out articles.</p>')
    blocks = []
    for g in generations:
        where = "prompt from config" if g.get("source") == "config" else "prompt from a held-out article"
        meta = [esc(where)]
        if g.get("title"):
            meta.append(f"article: <b>{esc(g['title'])}</b>")
        if g.get("heading"):
            meta.append(f"section: {esc(g['heading'])}")
        cols = []
        for which in ("base", "finetuned"):
            a = g.get(which) or {}
            cols.append(
                f"<div><b>{esc(MODEL_LABELS[which])}</b><br>{_answer_badges(a, max_tokens)}"
                f"{_answer_text(a.get('text'))}</div>"
            )
        if g.get("reference"):
            cols.append(f"<div><b>Held-out post text</b><pre>{esc(g['reference'])}</pre></div>")
        blocks.append(
            f'<div class="gen"><div>{esc(g.get("prompt_id"))} · {" · ".join(meta)}</div>'
            f'<div class="prompt">{esc(g.get("prompt"))}</div><div class="cols">{"".join(cols)}</div></div>'
        )
    note = (
        "Same prompt, same seeded sampling for both models. Badges: how the answer ended, its length, "
        "and raw chat-template tokens leaking into the text (a sign of template/stop-token trouble)."
    )
    return page("Generations side by side", "\n".join(blocks), note)


# --------------------------------------------------------------------------- artefacts / metrics


def path_size(path: str | os.PathLike) -> int | None:
    """Bytes in a file, or in all files under a directory; None if missing."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return None


def artefacts_page(artefacts: Mapping[str, str | os.PathLike]) -> str:
    rows = [[name, str(path), Cell(fmt_bytes(path_size(path)), "num")] for name, path in artefacts.items()]
    return page(
        "Artefacts", table(["artefact", "path", "size"], rows), "What this run produced, with sizes on disk."
    )


def _loss_csv_summary(loss: pd.DataFrame) -> dict[str, Any]:
    train = loss[loss["split"] == "train"]
    valid = loss[loss["split"] == "valid"].dropna(subset=["loss"])

    def last(df: pd.DataFrame, col: str) -> Any:
        values = df[col].dropna()
        return _py(values.iloc[-1]) if len(values) else None

    def agg(df: pd.DataFrame, col: str, how: str) -> Any:
        values = df[col].dropna()
        return _py(getattr(values, how)()) if len(values) else None

    return {
        "steps": agg(loss, "step", "max"),
        "seconds": agg(loss, "elapsed_s", "max"),
        "trained_tokens": agg(loss, "trained_tokens", "max"),
        "tokens_per_second": agg(train, "tokens_per_second", "mean"),
        "peak_memory_gb": agg(loss, "peak_memory_gb", "max"),
        "final_train_loss": last(train.dropna(subset=["loss"]), "loss"),
        "base_valid_loss": _py(valid[valid["step"] == 0]["loss"].iloc[0])
        if (valid["step"] == 0).any()
        else None,
        "final_valid_loss": last(valid, "loss"),
    }


def run_metrics(
    *,
    base_model: str,
    model_slug: str,
    data_hash: str,
    config_hash: str,
    eval_metrics: Mapping[str, Any],
    loss: pd.DataFrame,
    train_summary: Mapping[str, Any],
    corpus: Mapping[str, Any],
) -> dict[str, Any]:
    """One record per run: what was trained on what, how long it took, and what it changed."""
    train = _loss_csv_summary(loss)
    for key, alt in (
        ("seconds", ("train_seconds", "seconds", "elapsed_s")),
        ("tokens_per_second", ("tokens_per_second",)),
        ("peak_memory_gb", ("peak_memory_gb",)),
    ):
        if train.get(key) is None:  # loss.csv lacks it: take summary.json's figure
            train[key] = next((train_summary[a] for a in alt if train_summary.get(a) is not None), None)
    return {
        "base_model": base_model,
        "model_slug": model_slug,
        "data_hash": data_hash,
        "config_hash": config_hash,
        "evaluated_at": eval_metrics.get("evaluated_at"),
        "corpus": dict(corpus),
        "splits": {
            split: {
                "samples": m.get("samples"),
                "tokens": m.get("tokens"),
                "loss_before": m["base"].get("loss"),
                "loss_after": m["finetuned"].get("loss"),
                "perplexity_before": m["base"].get("perplexity"),
                "perplexity_after": m["finetuned"].get("perplexity"),
                "loss_change": m.get("loss_change"),
                "perplexity_change": m.get("perplexity_change"),
            }
            for split, m in eval_metrics.get("splits", {}).items()
        },
        "train": train,
        "generation": eval_metrics.get("generation", {}),
        "train_summary": dict(train_summary),
    }
