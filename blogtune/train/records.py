"""What a training run records: the loss CSV, the adapter config, the run summary, progress logs."""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from blogtune.io_utils import atomic_open
from blogtune.train.settings import TrainSettings

log = logging.getLogger(__name__)

LOSS_COLUMNS = (
    "step",
    "split",
    "loss",
    "learning_rate",
    "tokens_per_second",
    "trained_tokens",
    "peak_memory_gb",
    "elapsed_s",
)


@dataclass
class TrainResult:
    adapter_dir: Path
    iters: int
    final_train_loss: float | None
    final_valid_loss: float | None
    base_valid_loss: float | None
    tokens_per_second: float  # scored (non-padding) training tokens per second of training
    trained_tokens: int
    peak_memory_gb: float
    train_seconds: float
    total_seconds: float
    samples_over_max_seq_length: dict[str, int]
    resumed_from_step: int = 0
    n_train: int = 0
    n_valid: int = 0
    step_stats: list[tuple[int, float, float]] = field(
        default_factory=list
    )  # (tokens, seconds, loss) per step

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["adapter_dir"] = str(self.adapter_dir)
        d.pop("step_stats")
        return d


@dataclass
class LossLog:
    """Loss rows (the CSV), report windows and the numbers the summary needs."""

    iters: int
    rows: list[dict] = field(default_factory=list)
    trained_tokens: int = 0
    elapsed_before: float = 0.0
    t0: float = field(default_factory=time.perf_counter)
    window: list[tuple[int, float, float]] = field(default_factory=list)
    step_stats: list[tuple[int, float, float]] = field(default_factory=list)
    last_train: float | None = None
    last_valid: float | None = None

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t0

    def step(self, n: int, dt: float, loss: float) -> None:
        self.trained_tokens += n
        self.window.append((n, dt, loss))
        self.step_stats.append((n, dt, loss))

    def train_row(self, step: int, lr: float, peak_gb: float) -> None:
        toks = sum(w[0] for w in self.window)
        secs = sum(w[1] for w in self.window)
        self.last_train = sum(w[0] * w[2] for w in self.window) / max(toks, 1)
        tps = toks / max(secs, 1e-9)
        self.window = []
        self._row(step, "train", self.last_train, f"{lr:.3e}", round(tps, 1), peak_gb)
        train_time = sum(s[1] for s in self.step_stats)
        eta = (self.iters - step) * train_time / max(len(self.step_stats), 1)
        log.info(
            "step %d/%d (%d%%) | train loss %.4f | lr %.2e | %.0f tok/s | %.1fk tokens | peak %.2f GB | ETA %s",
            step,
            self.iters,
            100 * step // self.iters,
            self.last_train,
            lr,
            tps,
            self.trained_tokens / 1000,
            peak_gb,
            fmt_duration(eta),
        )

    def valid_row(self, step: int, loss: float | None, seconds: float, peak_gb: float) -> None:
        if loss is None:
            return
        self.last_valid = loss
        self._row(step, "valid", loss, "", "", peak_gb)
        log.info("step %d/%d | valid loss %.4f (%.1fs)", step, self.iters, loss, seconds)

    def _row(self, step, split, loss, lr, tps, peak_gb) -> None:
        self.rows.append(
            dict(
                step=step,
                split=split,
                loss=round(loss, 6),
                learning_rate=lr,
                tokens_per_second=tps,
                trained_tokens=self.trained_tokens,
                peak_memory_gb=round(peak_gb, 3),
                elapsed_s=round(self.elapsed(), 2),
            )
        )

    def first(self, split: str, step: int | None = None) -> float | None:
        for r in self.rows:
            if r["split"] == split and (step is None or int(r["step"]) == step):
                return float(r["loss"])
        return None

    def last(self, split: str) -> float | None:
        return next((float(r["loss"]) for r in reversed(self.rows) if r["split"] == split), None)


def fmt_duration(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def write_loss_csv(path: Path, rows: list[dict]) -> None:
    with atomic_open(path, "w") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOSS_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def adapter_config(settings: TrainSettings, keys: list[str] | None, model_dir: Path, n_layers: int) -> dict:
    lora = {"rank": settings.rank, "scale": settings.scale, "dropout": settings.dropout}
    if keys:
        lora["keys"] = keys
    return {
        "model": str(model_dir),
        "fine_tune_type": settings.fine_tune_type,
        "num_layers": n_layers,
        "lora_parameters": lora,
        "mask_prompt": settings.mask_prompt,
        "max_seq_length": settings.max_seq_length,
        "blogtune_settings": settings.to_dict(),
    }


def progress_bar(progress: bool | None, iters: int, start: int):
    if not (progress if progress is not None else sys.stderr.isatty()):
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=iters, initial=start, desc="train", unit="step", leave=False)


def fmt_loss(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
