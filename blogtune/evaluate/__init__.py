"""Evaluate stage (rule evaluate): base vs fine-tuned model on held-out posts, losses and generations.

Public API:
    EvalSettings                      `evaluate:` settings, defaults from the schema (settings)
    read_training_settings            how the adapters were trained: what to score (losses)
    evaluate_model_pair, EvalResult   the whole before/after run (pair)
    batch_generate                    greedy answers decoded together (generation; the exam uses it)
"""

from blogtune.evaluate.generation import batch_generate
from blogtune.evaluate.losses import read_training_settings
from blogtune.evaluate.pair import EvalResult, evaluate_model_pair
from blogtune.evaluate.settings import EvalSettings

__all__ = ["EvalResult", "EvalSettings", "batch_generate", "evaluate_model_pair", "read_training_settings"]
