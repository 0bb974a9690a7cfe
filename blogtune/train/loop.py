"""LoRA / DoRA / full fine-tuning on mlx-lm's building blocks: the training loop.

We keep mlx-lm's models, LoRA/DoRA layers (`linear_to_lora_layers`), dataset classes and adapter
format (`adapters.safetensors` + `adapter_config.json`, what `mlx_lm.fuse --adapter-path` and
`mlx_lm.load(..., adapter_path=)` read) and write our own loop around them, because the loop is
where the CPU time and the resume state live (mlx-lm's trainer restarts its optimizer on resume
and pushes every token through the output layer). The pieces: settings, memory (preflight),
batches (tokens and the scoring window), kernels (CPU attention / swiglu / loss), runner (the
compiled steps and the frozen-prefix cache), checkpoint (resume, signals), records (loss CSV,
summary). Matmuls must go to OpenBLAS, not the wheel's reference BLAS (blogtune.blas, ~40x).
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from blogtune.io_utils import atomic_dir, atomic_write_json
from blogtune.model.convert import rope_overrides
from blogtune.train.batches import Encoded, encode_split, eval_batches, plan_batches, split_weight
from blogtune.train.checkpoint import (
    SignalCatcher,
    fingerprint,
    interrupt,
    load_checkpoint,
    restore,
    save_checkpoint,
)
from blogtune.train.kernels import on_cpu, patched_attention
from blogtune.train.memory import available_memory_bytes, check_fits, estimate_memory
from blogtune.train.records import (
    LossLog,
    TrainResult,
    adapter_config,
    fmt_duration,
    fmt_loss,
    progress_bar,
    write_loss_csv,
)
from blogtune.train.runner import Runner
from blogtune.train.settings import TrainSettings, iters_for, key_matches

log = logging.getLogger(__name__)


def resolve_keys(model, keys: Sequence[str] | None) -> list[str] | None:
    """Map user keys ("q_proj" or "self_attn.q_proj") to mlx-lm's module paths inside a block."""
    if not keys:
        return None
    import mlx.nn as nn

    names = [n for n, m in model.layers[-1].named_modules() if isinstance(m, (nn.Linear, nn.QuantizedLinear))]
    resolved, missing = [], []
    for key in keys:
        hits = [n for n in names if key_matches(n, key)]
        (resolved.extend(hits) if hits else missing.append(key))
    if missing:
        raise ValueError(f"train.keys: {missing} match no linear layer; available: {sorted(names)}")
    return sorted(set(resolved))


def make_schedule(settings: TrainSettings, total_updates: int) -> Callable:
    """Linear warmup to `learning_rate`, then constant / cosine / linear decay to `min_learning_rate`.

    Not mlx-lm's `build_schedule`: its warmup starts at lr 0 on the first update (linear_schedule
    from warmup_init) and joins the decay one step later, so the first update is wasted and every
    later lr shifts by one step; ours gives the first update lr / warmup_steps. Switching would
    change trained weights (tests/test_train.py pins both schedules).
    """
    import mlx.core as mx

    lr, lo = float(settings.learning_rate), float(settings.min_learning_rate)
    warm = int(settings.warmup_steps)
    span = max(1, total_updates - warm)

    def schedule(step):
        s = step.astype(mx.float32) if isinstance(step, mx.array) else mx.array(step, mx.float32)
        t = mx.clip((s - warm) / span, 0.0, 1.0)
        if settings.lr_schedule == "cosine":
            main = lo + (lr - lo) * 0.5 * (1.0 + mx.cos(math.pi * t))
        elif settings.lr_schedule == "linear":
            main = lr + (lo - lr) * t
        else:
            main = mx.array(lr, mx.float32)
        if warm <= 0:
            return main
        return mx.where(s < warm, lr * (s + 1.0) / warm, main)

    return schedule


def make_optimizer(settings: TrainSettings, total_updates: int):
    import mlx.optimizers as optim

    lr = make_schedule(settings, total_updates)
    if settings.optimizer == "adamw":
        return optim.AdamW(learning_rate=lr, weight_decay=settings.weight_decay)
    return optim.Adam(learning_rate=lr)


@contextlib.contextmanager
def restored_attr(obj, name: str, value) -> Iterator[None]:
    """Put `obj.name = value` back on exit (mlx-lm's grad_checkpoint patches the layer class)."""
    try:
        yield
    finally:
        setattr(obj, name, value)


def load_model(model_dir: Path, settings: TrainSettings):
    """mlx-lm model + tokenizer + config, in float32 on CPU, after the memory preflight."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm import load

    model, tokenizer, config = load(
        str(model_dir), model_config=rope_overrides(model_dir), return_config=True
    )
    cpu = on_cpu()
    quant = config.get("quantization") or config.get("quantization_config")
    dtypes = {v.dtype for _, v in tree_flatten(model.parameters())}
    if cpu and quant:
        log.warning("quantized base model on CPU: quantized matmuls are 10-20x slower here; use float32")
    elif cpu and (mx.bfloat16 in dtypes or mx.float16 in dtypes):
        log.info("casting half-precision weights to float32: CPU half matmuls bypass BLAS (10x slower)")
        model.set_dtype(mx.float32)
    if isinstance(quant, dict):
        bits = int(quant.get("bits", 4))
    else:
        bits = 32 if cpu or mx.float32 in dtypes else 16
    est = estimate_memory(config, bits, settings)
    avail = available_memory_bytes()
    log.info("memory estimate: %s; available %.1f GB", est.describe(), avail / 1024**3)
    check_fits(est, avail)
    return model, tokenizer, cpu


def load_data(data_dir: Path, tokenizer, settings: TrainSettings) -> tuple[Encoded, Encoded]:
    log.info("tokenizing %s", data_dir)
    train_set = encode_split(
        data_dir / "train.jsonl", tokenizer, settings.mask_prompt, settings.max_seq_length
    )
    valid_set = encode_split(
        data_dir / "valid.jsonl", tokenizer, settings.mask_prompt, settings.max_seq_length
    )
    if len(train_set) == 0:
        raise ValueError(f"no training samples in {data_dir / 'train.jsonl'}")
    for name, ds in (("train", train_set), ("valid", valid_set)):
        if ds.n_truncated:
            log.warning(
                "%s: %d of %d samples exceed max_seq_length=%d tokens (longest %d) and are truncated",
                name,
                ds.n_truncated,
                len(ds),
                settings.max_seq_length,
                ds.longest,
            )
    lens = np.array(train_set.lengths)
    log.info(
        "data: %d train / %d valid samples; tokens/sample median %d, max %d; %d scored train tokens per epoch",
        len(train_set),
        len(valid_set),
        int(np.median(lens)),
        int(lens.max()),
        sum(len(t) - s for t, s in zip(train_set.tokens, train_set.starts, strict=True)),
    )
    return train_set, valid_set


def apply_fine_tune(model, settings: TrainSettings) -> tuple[int, list[str] | None]:
    """Freeze the model, then add LoRA/DoRA layers (or unfreeze blocks) on the top num_layers blocks."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers

    mx.random.seed(settings.seed)  # LoRA A matrices are random: seeded like mlx-lm
    model.freeze()
    total = len(model.layers)
    if settings.num_layers > total:
        raise ValueError(f"train.num_layers={settings.num_layers} but the model has {total} layers")
    n_layers = total if settings.num_layers == -1 else settings.num_layers
    keys = resolve_keys(model, settings.keys)
    if settings.fine_tune_type == "full":
        for layer in model.layers[-n_layers:]:
            layer.unfreeze()
    else:
        cfg = {"rank": settings.rank, "scale": settings.scale, "dropout": settings.dropout}
        if keys:
            cfg["keys"] = keys
        linear_to_lora_layers(model, n_layers, cfg, use_dora=settings.fine_tune_type == "dora")
    n_train = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    n_all = sum(v.size for _, v in tree_flatten(model.parameters()))
    log.info(
        "%s on %d/%d layers: %.2fM of %.1fM parameters trainable (%.2f%%)",
        settings.fine_tune_type,
        n_layers,
        total,
        n_train / 1e6,
        n_all / 1e6,
        100 * n_train / max(n_all, 1),
    )
    return n_layers, keys


def train(
    model_dir: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    settings: TrainSettings,
    loss_csv: str | Path | None = None,
    resume_dir: str | Path | None = None,
    threads: int | None = None,
    progress: bool | None = None,
    on_step: Callable[[int], None] | None = None,
    group=None,
) -> TrainResult:
    """Fine-tune `model_dir` (an MLX model folder) on data_dir/{train,valid}.jsonl; adapters -> out_dir.

    resume_dir (outside out_dir): checkpoints for resume; deleted after success. threads: cores to
    use (default: all available to this process). progress: a tqdm bar on stderr (default: if a
    TTY). on_step(step) is called after each step (tests use it to send signals). group: an
    mlx.distributed group: this process trains on its share of each batch; only rank 0 writes
    (adapters, loss_csv, checkpoints), every rank reads the checkpoint to resume.
    """
    from blogtune import blas

    blas.setup_mlx_cpu(threads)  # no-op if done already / not on Linux CPU; must precede mlx import
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.trainer import grad_checkpoint

    t_start = time.perf_counter()
    settings.validate()
    model_dir, data_dir, out_dir = Path(model_dir), Path(data_dir), Path(out_dir)
    resume_dir = Path(resume_dir) if resume_dir else None
    threads = threads or blas.available_cores()
    rank, world = (group.rank(), group.size()) if group is not None else (0, 1)
    writer = rank == 0

    model, tokenizer, cpu = load_model(model_dir, settings)
    train_set, valid_set = load_data(data_dir, tokenizer, settings)
    batch_size = min(settings.batch_size, len(train_set))
    if batch_size < settings.batch_size:
        log.warning(
            "only %d training samples: batch_size %d -> %d", len(train_set), settings.batch_size, batch_size
        )
    iters = iters_for(settings, len(train_set))
    per_epoch = math.ceil(len(train_set) / batch_size)
    total_updates = max(1, iters // settings.grad_accumulation)
    log.info(
        "%d steps (%.2f epochs of %d batches of %d), %d optimizer updates",
        iters,
        iters / per_epoch,
        per_epoch,
        batch_size,
        total_updates,
    )
    n_layers, keys = apply_fine_tune(model, settings)
    layer_cls, layer_call = type(model.layers[0]), type(model.layers[0]).__call__
    if settings.grad_checkpoint:
        grad_checkpoint(model.layers[0])  # patches the class; restored when training ends
    optimizer = make_optimizer(settings, total_updates)
    if cpu:
        blas.set_blas_threads(threads)  # one MLX stream: every core goes to BLAS (see runner)

    fp = (
        fingerprint(settings, [data_dir / "train.jsonl", data_dir / "valid.jsonl"], model_dir)
        if resume_dir
        else ""
    )
    book = LossLog(iters)
    start_step, grad_accum = 0, None
    if resume_dir is not None:
        state = load_checkpoint(resume_dir, fp)
        if state is not None:
            grad_accum = restore(resume_dir, model, optimizer)
            start_step = int(state["step"])
            book.rows, book.trained_tokens = state["loss_rows"], int(state["trained_tokens"])
            book.elapsed_before = float(state["elapsed_s"])
            log.info("resuming from step %d/%d (checkpoint in %s)", start_step, iters, resume_dir)
    else:
        log.info("no resume_dir: an interrupted run will start over")
    if world > 1:
        agreed = mx.distributed.all_sum(mx.array(start_step), group=group).item()
        if agreed != start_step * world:
            raise RuntimeError(
                f"rank {rank} resumes from step {start_step} but the ranks disagree: is {resume_dir} "
                "the same folder on every host?"
            )
        log.info("rank %d of %d: trains on its share of every batch", rank, world)
    save_dir = resume_dir if writer else None

    def ckpt_state(step: int) -> dict:
        return dict(
            fingerprint=fp,
            step=step,
            iters=iters,
            trained_tokens=book.trained_tokens,
            elapsed_s=round(book.elapsed(), 2),
            loss_rows=book.rows,
            settings=settings.to_dict(),
        )

    with patched_attention(model, enable=cpu) as patched, restored_attr(layer_cls, "__call__", layer_call):
        eos_ids = sorted(tokenizer.eos_token_ids)
        token_norm = None
        if settings.loss_norm == "tokens":
            token_norm = split_weight(train_set, eos_ids, settings.eos_weight) / per_epoch
            log.info("loss_norm tokens: every batch's loss sum / %.1f (the average batch's weight)", token_norm)
        runner = Runner(model, optimizer, settings, n_layers, group, eos_ids, token_norm)
        runner.grad_accum = grad_accum  # gradients of the steps since the last update, if resumed
        log.info(
            "%s path: %s BLAS thread(s); attention %s; %s",
            "CPU" if cpu else "GPU",
            blas.blas_report()["blas_threads"] or "-",
            "blocked matmul + fused exp" if patched else "mx.fast",
            runner.describe(),
        )
        val_plan = eval_batches(valid_set.lengths, batch_size, settings.val_batches, settings.seed)

        def validate(step: int) -> None:
            tic = time.perf_counter()
            loss = runner.evaluate(valid_set, val_plan if len(valid_set) else [])
            book.valid_row(step, loss, time.perf_counter() - tic, mx.get_peak_memory() / 1e9)

        if start_step == 0:
            mx.reset_peak_memory()
            validate(0)
        model.train()
        bar = progress_bar(progress if writer else False, iters, start_step)
        plans: dict[int, list[list[int]]] = {}

        def stop(step: int, sig: SignalCatcher) -> None:
            """Checkpoint and raise if a signal arrived (on any rank: all stop at the same step)."""
            signum = sig.signum
            if world > 1:
                signum = mx.distributed.all_max(mx.array(signum or 0), group=group).item() or None
            if signum is not None:
                state = ckpt_state(step)
                raise interrupt(save_dir, model, optimizer, state, signum, step, bar, runner.grad_accum)

        with SignalCatcher() as sig:
            for step in range(start_step + 1, iters + 1):
                stop(step - 1, sig)  # arrived before this step started
                epoch, pos = divmod(step - 1, per_epoch)
                if epoch not in plans:
                    plans = {epoch: plan_batches(train_set.lengths, batch_size, settings.seed, epoch)}
                tic = time.perf_counter()
                loss, ntok = runner.train_step(train_set, plans[epoch][pos], step)
                dt, n = time.perf_counter() - tic, int(ntok.item())
                book.step(n, dt, float(loss.item()))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{n / dt:.0f}")
                if step % settings.steps_per_report == 0 or step == iters:
                    book.train_row(step, float(optimizer.learning_rate.item()), mx.get_peak_memory() / 1e9)
                if step % settings.steps_per_eval == 0 or step == iters:
                    validate(step)
                if on_step is not None:
                    on_step(step)
                stop(step, sig)
                if save_dir is not None and step % settings.save_every == 0 and step < iters:
                    save_checkpoint(save_dir, model, optimizer, ckpt_state(step), runner.grad_accum)
                    log.info("checkpoint: step %d -> %s", step, resume_dir)
        if bar is not None:
            bar.close()

    if writer:
        with atomic_dir(out_dir) as tmp:
            mx.save_safetensors(
                str(tmp / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters()))
            )
            atomic_write_json(tmp / "adapter_config.json", adapter_config(settings, keys, model_dir, n_layers))
        if loss_csv is not None:
            write_loss_csv(Path(loss_csv), book.rows)
        if resume_dir is not None:
            shutil.rmtree(resume_dir, ignore_errors=True)
    train_time = sum(s[1] for s in book.step_stats)
    result = TrainResult(
        adapter_dir=out_dir,
        iters=iters,
        final_train_loss=book.last("train"),
        final_valid_loss=book.last("valid"),
        base_valid_loss=book.first("valid", 0),
        tokens_per_second=round(sum(s[0] for s in book.step_stats) / max(train_time, 1e-9), 1),
        trained_tokens=book.trained_tokens,
        peak_memory_gb=round(mx.get_peak_memory() / 1e9, 3),
        train_seconds=round(train_time, 2),
        total_seconds=round(time.perf_counter() - t_start, 2),
        samples_over_max_seq_length={"train": train_set.n_truncated, "valid": valid_set.n_truncated},
        resumed_from_step=start_step,
        n_train=len(train_set),
        n_valid=len(valid_set),
        step_stats=book.step_stats,
    )
    log.info(
        "done: %d steps, train loss %s, valid loss %s (base %s), %.0f tok/s, %s",
        iters,
        fmt_loss(result.final_train_loss),
        fmt_loss(result.final_valid_loss),
        fmt_loss(result.base_valid_loss),
        result.tokens_per_second,
        fmt_duration(result.total_seconds),
    )
    return result
