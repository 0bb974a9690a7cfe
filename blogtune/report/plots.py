"""PNG figures for the report: training curves, chunk lengths, per-article perplexity.

Every function takes plain data (DataFrames, lists) and a path, and writes the PNG atomically.
Empty inputs still give a figure that says so, so the report never has a hole.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on build machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from blogtune.io_utils import atomic_open  # noqa: E402
from blogtune.train import LOSS_COLUMNS  # noqa: E402

log = logging.getLogger(__name__)

SPLIT_COLORS = {"test": "tab:red", "valid": "tab:orange", "train_sample": "tab:blue", "train": "tab:blue"}
SPLIT_NAMES = {"test": "test (held out)", "valid": "validation", "train_sample": "training sample"}


def read_loss_csv(path: str | os.PathLike) -> pd.DataFrame:
    """loss.csv with every expected column present (missing ones as NaN), numeric where numeric."""
    df = pd.read_csv(path)
    for col in LOSS_COLUMNS:
        if col not in df.columns:
            df[col] = np.nan
    for col in LOSS_COLUMNS:
        if col != "split":
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def _save(fig, path: str | os.PathLike) -> Path:
    with atomic_open(path, "wb", encoding=None) as fh:
        fig.savefig(fh, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    log.info("wrote %s", path)
    return Path(path)


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_loss(loss: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Train and validation loss against step; the step-0 validation point is the base model."""
    fig, ax = plt.subplots(figsize=(7, 4))
    train = loss[loss["split"] == "train"].dropna(subset=["loss"])
    valid = loss[loss["split"] == "valid"].dropna(subset=["loss"])
    if train.empty and valid.empty:
        _empty(ax, "no loss values recorded")
    else:
        if not train.empty:
            ax.plot(train["step"], train["loss"], label="train", color="tab:blue", lw=1.5)
        if not valid.empty:
            ax.plot(valid["step"], valid["loss"], "o-", label="validation", color="tab:orange", ms=4)
            base = valid[valid["step"] == 0]
            if not base.empty:
                ax.scatter(
                    base["step"],
                    base["loss"],
                    s=80,
                    marker="*",
                    color="black",
                    zorder=3,
                    label="base model (step 0)",
                )
        ax.set_xlabel("step")
        ax.set_ylabel("loss (mean token NLL)")
        ax.grid(alpha=0.3)
        ax.legend()
    ax.set_title("Loss during training")
    return _save(fig, path)


def _train_series(loss: pd.DataFrame, column: str) -> pd.DataFrame:
    rows = loss[loss["split"] == "train"].dropna(subset=[column])
    return rows if not rows.empty else loss.dropna(subset=[column])


def plot_learning_rate(loss: pd.DataFrame, path: str | os.PathLike) -> Path:
    fig, ax = plt.subplots(figsize=(7, 3))
    rows = _train_series(loss, "learning_rate")
    if rows.empty:
        _empty(ax, "no learning rate recorded")
    else:
        ax.plot(rows["step"], rows["learning_rate"], color="tab:green")
        ax.set_xlabel("step")
        ax.set_ylabel("learning rate")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.grid(alpha=0.3)
    ax.set_title("Learning rate schedule")
    return _save(fig, path)


def plot_throughput(loss: pd.DataFrame, path: str | os.PathLike) -> Path:
    fig, ax = plt.subplots(figsize=(7, 3))
    rows = _train_series(loss, "tokens_per_second")
    if rows.empty:
        _empty(ax, "no throughput recorded")
    else:
        ax.plot(rows["step"], rows["tokens_per_second"], color="tab:purple")
        ax.set_xlabel("step")
        ax.set_ylabel("tokens / s")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    ax.set_title("Training throughput")
    return _save(fig, path)


def plot_chunk_lengths(
    lengths: Sequence[int], path: str | os.PathLike, unit: str = "characters", limit: int | None = None
) -> Path:
    """Histogram of chunk sizes; `limit` (e.g. chunk.max_chars) is drawn as a dashed line."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    values = np.asarray(list(lengths), dtype=float)
    if values.size == 0:
        _empty(ax, "no chunks")
        ax.set_title("Chunk lengths")
    else:
        ax.hist(values, bins=min(40, max(5, values.size // 3)), color="tab:blue", alpha=0.8)
        if limit:
            ax.axvline(limit, color="black", ls="--", lw=1, label=f"limit {limit}")
            ax.legend()
        ax.set_xlabel(f"chunk length ({unit})")
        ax.set_ylabel("chunks")
        ax.grid(alpha=0.3)
        ax.set_title(f"Chunk lengths: {values.size} chunks, median {np.median(values):.0f} {unit}")
    return _save(fig, path)


def plot_article_perplexity(per_article: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Base vs fine-tuned perplexity per article; points under the diagonal improved."""
    fig, ax = plt.subplots(figsize=(6, 6))
    df = (
        per_article.dropna(subset=["base_perplexity", "finetuned_perplexity"])
        if len(per_article)
        else per_article
    )
    if df is None or len(df) == 0:
        _empty(ax, "no articles evaluated")
    else:
        for split, rows in df.groupby("split", sort=False):
            ax.scatter(
                rows["base_perplexity"],
                rows["finetuned_perplexity"],
                s=30,
                alpha=0.8,
                color=SPLIT_COLORS.get(str(split), "tab:gray"),
                label=f"{SPLIT_NAMES.get(str(split), split)} ({len(rows)})",
            )
        lo = float(min(df["base_perplexity"].min(), df["finetuned_perplexity"].min()))
        hi = float(max(df["base_perplexity"].max(), df["finetuned_perplexity"].max()))
        lo, hi = lo / 1.2, hi * 1.2
        ax.plot([lo, hi], [lo, hi], color="gray", ls="--", lw=1, label="no change")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel("base model perplexity")
        ax.set_ylabel("fine-tuned perplexity")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    ax.set_title("Per-article perplexity (below the line = improved)")
    return _save(fig, path)
