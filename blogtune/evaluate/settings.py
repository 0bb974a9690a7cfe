"""Evaluation settings: config.yaml's `evaluate:` section (defaults from the schema) plus how training scored.

mask_prompt / max_seq_length come from the adapters' adapter_config.json (what training used);
their defaults here are mlx-lm's, for adapters that do not record them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from blogtune.schema import section_defaults

MLX_LM_DEFAULT_MAX_SEQ_LENGTH = 2048
_DEFAULT = section_defaults("evaluate")


@dataclass
class EvalSettings:
    mask_prompt: bool = False
    max_seq_length: int = MLX_LM_DEFAULT_MAX_SEQ_LENGTH
    batch_size: int = _DEFAULT["batch_size"]
    # mlx-lm's default_loss window is `offset <= step <= length`: it also scores the padding
    # id 0 that follows each sample. True reproduces mlx-lm's loss numbers; False scores only
    # the sample's own tokens (the window blogtune's training scores).
    score_pad_target: bool = False
    train_sample_articles: int = _DEFAULT["train_sample_articles"]
    heldout_prompts: int = _DEFAULT["heldout_prompts"]
    prompts: list[str] = field(default_factory=lambda: list(_DEFAULT["prompts"]))
    max_tokens: int = _DEFAULT["max_tokens"]
    temperature: float = _DEFAULT["temperature"]
    top_p: float = _DEFAULT["top_p"]
    seed: int = _DEFAULT["seed"]
