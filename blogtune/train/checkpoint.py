"""Resume state: checkpoints of adapter weights, optimizer state (incl. the LR-schedule step), step
and the gradient-accumulation buffer (an interrupt between two updates would otherwise drop the
gradients of the batches since the last update, and the resumed run would diverge).

mlx-lm saves adapters only, so a resumed mlx_lm.lora run restarts its optimizer; here the data
order (seed, epoch) and the dropout RNG (seed, step) are pure functions of the step, so a resumed
run continues the same trajectory. Checkpoints are keyed by a fingerprint of settings + data +
base model, written every `save_every` steps and on SIGTERM/SIGINT.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import signal
from collections.abc import Sequence
from pathlib import Path

from blogtune.io_utils import atomic_dir
from blogtune.train.settings import TrainSettings

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"
GRAD_ACCUM = "grad_accum.safetensors"
# Settings that change what is computed; the rest only change logging/eval cadence, or are exact
# (distributed: the same sums in another order, so a run cut under N processes resumes under M).
_NOT_FINGERPRINTED = (
    "steps_per_report", "steps_per_eval", "val_batches", "save_every", "compile", "prefix_cache",
    "distributed",
)


class TrainingInterrupted(RuntimeError):
    """SIGTERM/SIGINT arrived; a checkpoint was written to resume_dir first."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"interrupted by signal {signum} at step {step}; checkpoint saved")
        self.signum, self.step = signum, step


def fingerprint(settings: TrainSettings, data_files: Sequence[Path], model_dir: Path) -> str:
    """Hash of what determines the training trajectory: settings, data, base model, mlx versions."""
    from importlib import metadata

    h = hashlib.sha256()
    relevant = {k: v for k, v in settings.to_dict().items() if k not in _NOT_FINGERPRINTED}
    h.update(json.dumps(relevant, sort_keys=True).encode())
    for pkg in ("mlx", "mlx-lm"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            h.update(f"{pkg}={metadata.version(pkg)}".encode())
    for f in data_files:
        h.update((_file_digest(Path(f)) if Path(f).is_file() else "missing").encode())
    model_dir = Path(model_dir)
    weights = sorted(model_dir.glob("*.safetensors"))
    small = sum(p.stat().st_size for p in weights) <= 2 * 1024**3
    for p in [model_dir / "config.json", *weights]:
        if not p.is_file():
            continue
        if p.suffix == ".json" or small:
            h.update(_file_digest(p).encode())
        else:  # big models: size + mtime, not 10+ GB of hashing
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(resume_dir: Path, model, optimizer, state: dict, grad_accum=None) -> None:
    """grad_accum: gradients summed since the last optimizer update (None on an update boundary)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    with atomic_dir(resume_dir / CHECKPOINT) as tmp:
        mx.save_safetensors(
            str(tmp / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters()))
        )
        mx.save_safetensors(str(tmp / "optimizer.safetensors"), dict(tree_flatten(optimizer.state)))
        if grad_accum is not None:
            mx.save_safetensors(str(tmp / GRAD_ACCUM), dict(tree_flatten(grad_accum)))
        (tmp / "state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")


def load_checkpoint(resume_dir: Path, expect_fp: str) -> dict | None:
    ckpt = resume_dir / CHECKPOINT
    try:
        state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if state.get("fingerprint") != expect_fp:
        log.info(
            "resume: checkpoint in %s is for another run (fingerprint %s, now %s: settings, data or "
            "base model changed); starting fresh",
            resume_dir,
            state.get("fingerprint"),
            expect_fp,
        )
        shutil.rmtree(ckpt, ignore_errors=True)
        return None
    return state


def restore(resume_dir: Path, model, optimizer):
    """Load adapters and optimizer state; returns the saved gradient-accumulation buffer or None."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_map_with_path, tree_unflatten

    ckpt = resume_dir / CHECKPOINT
    model.load_weights(list(mx.load(str(ckpt / "adapters.safetensors")).items()), strict=False)
    optimizer.init(model.trainable_parameters())
    saved = mx.load(str(ckpt / "optimizer.safetensors"))
    current = dict(tree_flatten(optimizer.state))
    current.update(saved)
    optimizer.state = tree_unflatten(list(current.items()))
    if not (ckpt / GRAD_ACCUM).is_file():
        return None
    grads = mx.load(str(ckpt / GRAD_ACCUM))
    # Shaped like the trainable parameters, as value_and_grad returns it.
    return tree_map_with_path(lambda path, _: grads[path], model.trainable_parameters())


class SignalCatcher:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each step (handlers restored on exit).

    SIGUSR1 is the distributed launcher passing a stop on (blogtune.train.launch): a rank that got
    Ctrl-C or SLURM's SIGTERM itself as well must count that once, never as the "stop now" second.
    """

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):  # noqa: ARG002
        if self.signum is not None:
            if signal.SIGUSR1 not in (signum, self.signum):
                raise KeyboardInterrupt  # a second Ctrl-C / SIGTERM: stop now
            if signum != signal.SIGUSR1:  # the same stop, seen twice: keep the real signal
                self.signum = signum
            return
        self.signum = signum
        log.warning("signal %d: saving a checkpoint after this step, then stopping", signum)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def interrupt(
    resume_dir, model, optimizer, state: dict, signum: int, step: int, bar, grad_accum=None
) -> TrainingInterrupted:
    """Close the progress bar, save a checkpoint (if there is a step to resume from): the error to raise."""
    if bar is not None:
        bar.close()
    if resume_dir is not None and step > 0:
        save_checkpoint(Path(resume_dir), model, optimizer, state, grad_accum)
        log.warning("checkpoint at step %d saved to %s; rerun to resume", step, resume_dir)
    return TrainingInterrupted(signum, step)
