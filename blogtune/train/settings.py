"""Training settings: config.yaml's `train:` section as a dataclass.

Defaults and bounds come from schemas/config.schema.yaml (blogtune.schema), so the schema is the
one place they are written; only the checks a schema cannot express (iters or epochs) live here.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from blogtune.schema import check_section, section_defaults

_DEFAULT = section_defaults("train")


@dataclass
class TrainSettings:
    fine_tune_type: str = _DEFAULT["fine_tune_type"]  # lora | dora | full
    num_layers: int = _DEFAULT["num_layers"]  # top transformer blocks that train (-1: all)
    rank: int = _DEFAULT["rank"]
    scale: float = _DEFAULT["scale"]  # mlx-lm's LoRA scale (= alpha / rank in PEFT terms)
    dropout: float = _DEFAULT["dropout"]
    keys: list[str] | None = _DEFAULT["keys"]  # target modules, e.g. ["self_attn.q_proj"]; None: all linears
    learning_rate: float = _DEFAULT["learning_rate"]
    lr_schedule: str = _DEFAULT["lr_schedule"]  # constant | cosine | linear (after warmup)
    warmup_steps: int = _DEFAULT["warmup_steps"]  # optimizer updates of linear warmup
    min_learning_rate: float = _DEFAULT["min_learning_rate"]
    optimizer: str = _DEFAULT["optimizer"]  # adam | adamw
    weight_decay: float = _DEFAULT["weight_decay"]
    iters: int | None = _DEFAULT["iters"]  # training steps (batches); wins over epochs when both are set
    epochs: float | None = _DEFAULT["epochs"]
    batch_size: int = _DEFAULT["batch_size"]
    grad_accumulation: int = _DEFAULT["grad_accumulation"]
    max_seq_length: int = _DEFAULT["max_seq_length"]  # longer samples are truncated (and counted)
    grad_checkpoint: bool = _DEFAULT["grad_checkpoint"]
    mask_prompt: bool = _DEFAULT["mask_prompt"]  # score only the answer tokens of chat samples
    eos_weight: float = _DEFAULT["eos_weight"]  # loss weight of the end-of-turn token (training only)
    loss_norm: str = _DEFAULT["loss_norm"]  # batch: mean per batch (mlx-lm) | tokens: every token the same
    prefix_cache: bool = _DEFAULT["prefix_cache"]  # cache the frozen blocks' output per sample
    seed: int = _DEFAULT["seed"]
    steps_per_report: int = _DEFAULT["steps_per_report"]
    steps_per_eval: int = _DEFAULT["steps_per_eval"]
    val_batches: int = _DEFAULT["val_batches"]  # -1: the whole validation set
    save_every: int = _DEFAULT["save_every"]  # resume checkpoint cadence (steps)
    # processes / hostfile / port: how the step runs (see launch), not what it computes
    distributed: dict = field(default_factory=lambda: dict(_DEFAULT["distributed"]))
    compile: bool = True  # mx.compile the step; not a config key (off only when debugging)

    @classmethod
    def from_dict(cls, values: dict | None) -> TrainSettings:
        """Build from a config mapping; unknown keys are an error that names them."""
        values = dict(values or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"train: unknown setting(s) {unknown}; known: {sorted(names)}")
        settings = cls(**values)
        settings.validate()
        return settings

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        check_section("train", self.to_dict())
        if self.iters is None and self.epochs is None:
            raise ValueError("train: set iters or epochs")


def iters_for(settings: TrainSettings, n_train: int) -> int:
    """Training steps (batches): `iters` if set, else epochs x batches per epoch."""
    if settings.iters is not None:
        return int(settings.iters)
    per_epoch = math.ceil(n_train / min(settings.batch_size, max(n_train, 1)))
    return max(1, math.ceil(float(settings.epochs) * per_epoch))


def key_matches(path: str, key: str) -> bool:
    """A user key ("q_proj" or "self_attn.q_proj") names the module at `path` inside a block."""
    return path == key or path.endswith("." + key)


def load_settings_json(path: str | Path) -> TrainSettings:
    return TrainSettings.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
