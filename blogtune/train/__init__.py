"""Train stage (rules/train.smk: train, fuse): MLX model + samples -> LoRA adapters -> fused model.

Public API:
    TrainSettings, iters_for                       `train:` settings, defaults from the schema (settings)
    estimate_memory, check_fits, MemoryError_      the memory preflight (memory)
    encode_rows, target_window, first_scored       tokens and the ONE scoring window evaluation shares (batches)
    patched_attention, on_cpu, make_cross_entropy  the fast CPU kernels evaluation and the exam reuse (kernels)
    output_head                                    the output layer on scored rows only, checked against model(x) (head)
    train, TrainResult, TrainingInterrupted        the training run (loop)
    LOSS_COLUMNS                                   columns of train/loss.csv (records)
    fuse_adapters                                  adapters + base -> one HF folder (fuse)
Importing it does not import MLX: that waits for `train` (after blogtune.blas set the CPU up).
"""

from blogtune.train.batches import encode_rows, first_scored, target_window
from blogtune.train.checkpoint import TrainingInterrupted
from blogtune.train.fuse import fuse_adapters
from blogtune.train.head import output_head
from blogtune.train.kernels import make_cross_entropy, on_cpu, patched_attention
from blogtune.train.loop import train
from blogtune.train.memory import MemoryError_, check_fits, estimate_memory
from blogtune.train.records import LOSS_COLUMNS, TrainResult
from blogtune.train.settings import TrainSettings, iters_for

__all__ = [
    "LOSS_COLUMNS",
    "MemoryError_",
    "TrainResult",
    "TrainSettings",
    "TrainingInterrupted",
    "check_fits",
    "encode_rows",
    "estimate_memory",
    "first_scored",
    "make_cross_entropy",
    "on_cpu",
    "output_head",
    "patched_attention",
    "target_window",
    "fuse_adapters",
    "iters_for",
    "train",
]
