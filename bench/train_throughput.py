"""LoRA training throughput: the workflow's MLX training vs a PyTorch + PEFT reference.

    .venv/bin/python bench/train_throughput.py [--runs 2] [--steps 12] [--warmup 3]
        [--data DIR] [--batch-size 4] [--rank 8] [--scale 20] [--num-layers 16]
        [--keys q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj] [--max-seq-length 512]
        [--device cpu|gpu] [--workdir /tmp/blogtune-bench]

Both sides train the same base model (the embedded SmolLM2-135M-Instruct: imported to a float32
HF folder and converted to MLX float32 by the workflow's own `import_base`/`convert` rules), on
the same formatted data (the workflow's `format` output for sample_blog/, or --data DIR with
train.jsonl), with the same LoRA layers/rank/alpha (PEFT lora_alpha = scale x rank)/targets, Adam
without bias correction (mlx's update; torch runs it as MlxAdam) at a constant LR, the same
batches in the same order (blogtune.train.batches.plan_batches) and the same truncation. Each run
is a fresh subprocess, alternating MLX, torch, MLX, torch...; warm-up steps are excluded; the
figure per framework is the median over runs of scored (non-padding, non-prompt) tokens / second
of training steps. Also printed: peak RSS per framework and the mean
training loss over the last 5 steps of each (it fails loudly if they disagree by > 2%).

MLX runs `blogtune.train.train` itself (length-aware micro-batches, scored-token-only output
layer, CPU attention, mx.compile); torch runs a plain HF + PEFT loop
(model(input_ids, labels=...), loss.backward(), MlxAdam.step()), right-padded batches, causal SDPA.
--device gpu: mlx CUDA backend vs torch CUDA, when both are present.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ALL_KEYS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
SLUG = "smollm2-135m-instruct"


# --------------------------------------------------------------------------- workers


def peak_rss_gb() -> float:
    """This worker's own peak RSS. VmHWM, not ru_maxrss: Linux carries a parent's high-water mark
    across fork+exec into the child's ru_maxrss."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024**2  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # no procfs: bytes on macOS
    return peak / (1024**3 if sys.platform == "darwin" else 1024**2)


def mlx_settings(cfg: dict):
    """blogtune's TrainSettings for the bench (one process or several): the loss and optimizer
    the PyTorch peer trains with (plain mean cross-entropy, Adam at a constant LR)."""
    from blogtune.train import TrainSettings

    return TrainSettings(
        num_layers=cfg["num_layers"],
        rank=cfg["rank"],
        scale=cfg["scale"],
        keys=cfg["keys"],
        learning_rate=cfg["lr"],
        lr_schedule="constant",
        warmup_steps=0,
        optimizer="adam",
        iters=cfg["warmup"] + cfg["steps"],
        batch_size=cfg["batch_size"],
        max_seq_length=cfg["max_seq_length"],
        mask_prompt=cfg["mask_prompt"],
        eos_weight=1.0,  # the plain mean cross-entropy the PyTorch peer trains on
        seed=cfg["seed"],
        steps_per_report=10**6,
        steps_per_eval=10**6,
    )


def worker_mlx(cfg: dict) -> dict:
    from blogtune import blas

    if cfg["device"] == "cpu":
        blas.setup_mlx_cpu()
    import mlx.core as mx

    if cfg["device"] == "gpu":
        mx.set_default_device(mx.gpu)
    from blogtune.train import train

    settings = mlx_settings(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        result = train(cfg["mlx_model"], cfg["train_only_dir"], Path(tmp) / "adapters", settings)
    stats = result.step_stats
    return {
        "steps": [[n, dt, loss] for n, dt, loss in stats],
        "peak_rss_gb": peak_rss_gb(),
        "blas": blas.blas_report(),
    }


# Same optimizer, batches and loss: the last-5 losses agree within 0.3 % here (12 steps); 2 %
# leaves room for float rounding and still catches a setup that trains something else.
LOSS_GAP = 0.02


class MlxAdam:
    """Adam as mlx's `optim.Adam` computes it for blogtune (and mlx-lm): no bias correction, mlx's
    default. torch.optim.Adam always corrects, which makes its first updates ~3x smaller: with it
    the two loss curves part by 10.9 % after 15 steps, and the bench's check cannot tell a wrong
    setup from a different optimizer. Same betas, eps and update: p -= lr * m / (sqrt(v) + eps)."""

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        import torch

        self.params, self.lr, self.betas, self.eps = list(params), lr, betas, eps
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    def step(self) -> None:
        import torch

        b1, b2 = self.betas
        grads = [p.grad for p in self.params]
        with torch.no_grad():  # multi-tensor ops, as torch's own Adam runs on CPU: no slower a peer
            torch._foreach_mul_(self.m, b1)
            torch._foreach_add_(self.m, grads, alpha=1 - b1)
            torch._foreach_mul_(self.v, b2)
            torch._foreach_addcmul_(self.v, grads, grads, value=1 - b2)
            denom = torch._foreach_sqrt(self.v)
            torch._foreach_add_(denom, self.eps)
            torch._foreach_addcdiv_(self.params, self.m, denom, value=-self.lr)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None


def worker_torch(cfg: dict) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from blogtune.train.batches import encode_split, plan_batches

    torch.manual_seed(cfg["seed"])
    device = "cuda" if cfg["device"] == "gpu" else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(cfg["hf_model"])
    data = encode_split(
        Path(cfg["train_only_dir"]) / "train.jsonl", tokenizer, cfg["mask_prompt"], cfg["max_seq_length"]
    )
    model = AutoModelForCausalLM.from_pretrained(
        cfg["hf_model"], dtype=torch.float32, attn_implementation="sdpa"
    )
    n_layers = model.config.num_hidden_layers
    lora = LoraConfig(
        r=cfg["rank"],
        lora_alpha=cfg["scale"] * cfg["rank"],
        lora_dropout=0.0,
        target_modules=[k.split(".")[-1] for k in cfg["keys"]],
        layers_to_transform=list(range(n_layers - cfg["num_layers"], n_layers)),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora).to(device)
    model.train()
    opt = MlxAdam([p for p in model.parameters() if p.requires_grad], lr=cfg["lr"])
    batch_size = min(cfg["batch_size"], len(data))
    per_epoch = -(-len(data) // batch_size)
    steps = []
    for step in range(cfg["warmup"] + cfg["steps"]):
        epoch, pos = divmod(step, per_epoch)
        idx = plan_batches(data.lengths, batch_size, cfg["seed"], epoch)[pos]
        width = max(len(data.tokens[i]) for i in idx)
        ids = torch.zeros((len(idx), width), dtype=torch.long)
        labels = torch.full((len(idx), width), -100, dtype=torch.long)
        for r, i in enumerate(idx):
            toks = torch.tensor(data.tokens[i])
            ids[r, : len(toks)] = toks
            labels[r, data.starts[i] : len(toks)] = toks[data.starts[i] :]
        n = int((labels[:, 1:] != -100).sum())
        ids, labels = ids.to(device), labels.to(device)
        tic = time.perf_counter()
        # Right padding + causal mask: padding never reaches a real token, so no attention_mask.
        out = model(input_ids=ids, labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        loss = float(out.loss.item())
        if device == "cuda":
            torch.cuda.synchronize()
        steps.append([n, time.perf_counter() - tic, loss])
    return {"steps": steps, "peak_rss_gb": peak_rss_gb(), "torch_threads": torch.get_num_threads()}


# --------------------------------------------------------------------------- driver


def prepare(args) -> dict:
    """Data dir (train.jsonl only), HF and MLX model folders: from --data or a workflow run."""
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    hf_model = Path(args.hf_model) if args.hf_model else work / "results" / SLUG / "base_hf"
    mlx_model = Path(args.mlx_model) if args.mlx_model else work / "results" / SLUG / "mlx_base"
    data_dir = Path(args.data) if args.data else work / "results" / SLUG / "data"
    if not (mlx_model / "config.json").is_file() or not (data_dir / "train.jsonl").is_file():
        from blogtune.testing import run_snakemake, write_config

        blog = REPO / "sample_blog"
        if args.data is None and not blog.is_dir():
            blog = make_synthetic_blog(work / "synthetic_blog")
        write_config(work, {"blog": {"dir": str(blog)}, "base_model": "embedded"})
        targets = [str(Path("results") / SLUG / "mlx_base")]
        if args.data is None:
            targets.append(str(Path("results") / SLUG / "data" / "train.jsonl"))
        print(f"preparing model/data with the workflow in {work} ...", flush=True)
        run_snakemake(work, *targets, cores=2)
    only = work / "train_only"
    only.mkdir(exist_ok=True)
    link = only / "train.jsonl"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to((data_dir / "train.jsonl").resolve())
    return {"hf_model": str(hf_model), "mlx_model": str(mlx_model), "train_only_dir": str(only)}


def make_synthetic_blog(out: Path) -> Path:
    import random

    rng = random.Random(0)
    words = "postgres vacuum index table bloat autovacuum planner wal checkpoint replica lock query".split()
    out.mkdir(parents=True, exist_ok=True)
    for i in range(40):
        paras = [
            "\n".join(" ".join(rng.choice(words) for _ in range(60)) for _ in range(3)) for _ in range(4)
        ]
        body = "\n\n".join(f"## Part {k}\n\n{p}" for k, p in enumerate(paras))
        (out / f"post{i:02d}.md").write_text(f"---\ntitle: Post {i}\n---\n\n{body}\n", encoding="utf-8")
    return out


def run_worker(kind: str, cfg: dict, prefix: Sequence[str] = (), env_extra: dict | None = None) -> dict:
    """One fresh worker process; `prefix` wraps its command (bench/profile_train.py: perf record)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(cfg, fh)
    out = fh.name + ".out"
    env = dict(os.environ, PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false", **(env_extra or {}))
    cmd = [*prefix, sys.executable, __file__, "--worker", kind, "--worker-config", fh.name, "--worker-out", out]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    result = json.loads(Path(out).read_text())
    os.unlink(fh.name)
    os.unlink(out)
    return result


def summarize(run: dict, warmup: int) -> dict:
    steps = run["steps"][warmup:]
    toks = sum(s[0] for s in steps)
    secs = sum(s[1] for s in steps)
    return {
        "tok_s": toks / secs,
        "last_loss": statistics.fmean(s[2] for s in run["steps"][-5:]),
        "peak_rss_gb": run["peak_rss_gb"],
        "losses": [round(s[2], 4) for s in run["steps"]],
    }


def worker_config(args) -> dict:
    """Everything a worker needs: model/data paths (prepared by the workflow) and the settings."""
    cfg = prepare(args)
    cfg.update(
        device=args.device,
        batch_size=args.batch_size,
        rank=args.rank,
        scale=args.scale,
        num_layers=args.num_layers,
        keys=[k.strip() for k in args.keys.split(",") if k.strip()],
        max_seq_length=args.max_seq_length,
        lr=args.lr,
        mask_prompt=not args.no_mask_prompt,
        seed=args.seed,
        steps=args.steps,
        warmup=args.warmup,
    )
    return cfg


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=2, help="runs per framework (alternating)")
    p.add_argument("--steps", type=int, default=12, help="measured steps per run")
    p.add_argument("--warmup", type=int, default=3, help="steps excluded from timing")
    p.add_argument("--data", help="formatted data dir with train.jsonl (default: workflow on sample_blog)")
    p.add_argument("--hf-model", help="HF float32 model dir (default: workflow's base_hf)")
    p.add_argument("--mlx-model", help="MLX model dir (default: workflow's mlx_base)")
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "blogtune-bench"))
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--scale", type=float, default=20.0)
    p.add_argument("--num-layers", type=int, default=16)
    p.add_argument("--keys", default=ALL_KEYS, help="LoRA targets for both frameworks")
    p.add_argument("--max-seq-length", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--no-mask-prompt", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--json", help="also write the results here")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.add_argument("--worker", choices=["mlx", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--worker-config", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        cfg = json.loads(Path(args.worker_config).read_text())
        result = (worker_mlx if args.worker == "mlx" else worker_torch)(cfg)
        Path(args.worker_out).write_text(json.dumps(result))
        return 0

    cfg = worker_config(args)
    results: dict[str, list[dict]] = {"mlx": [], "torch": []}
    for r in range(args.runs):
        for kind in ("mlx", "torch"):
            t0 = time.perf_counter()
            res = summarize(run_worker(kind, cfg), args.warmup)
            results[kind].append(res)
            print(
                f"run {r + 1}/{args.runs} {kind:5s}: {res['tok_s']:6.1f} tok/s, last-5 loss {res['last_loss']:.4f}, "
                f"peak RSS {res['peak_rss_gb']:.2f} GB ({time.perf_counter() - t0:.0f}s)",
                flush=True,
            )
    med = {k: statistics.median(x["tok_s"] for x in v) for k, v in results.items()}
    loss = {k: statistics.median(x["last_loss"] for x in v) for k, v in results.items()}
    rss = {k: max(x["peak_rss_gb"] for x in v) for k, v in results.items()}
    ratio = med["mlx"] / med["torch"]
    gap = abs(loss["mlx"] - loss["torch"]) / loss["torch"]
    print(f"\nsettings: {json.dumps({k: v for k, v in cfg.items() if not k.endswith(('_dir', '_model'))})}")
    print(
        f"mlx   (workflow): {med['mlx']:7.1f} tok/s  peak RSS {rss['mlx']:.2f} GB  loss(last 5) {loss['mlx']:.4f}"
    )
    print(
        f"torch + PEFT    : {med['torch']:7.1f} tok/s  peak RSS {rss['torch']:.2f} GB  loss(last 5) {loss['torch']:.4f}"
    )
    print(f"ratio mlx/torch : {ratio:.2f}x   (goal >= 1.30)")
    print(f"loss curves, mlx  : {results['mlx'][0]['losses']}")
    print(f"loss curves, torch: {results['torch'][0]['losses']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"cfg": cfg, "results": results, "ratio": ratio}, indent=1))
    if gap > LOSS_GAP:
        print(f"FAIL: final losses disagree by {gap:.1%} (> {LOSS_GAP:.0%}): the two setups do not train the same thing")
        return 2
    print(f"losses agree within {gap:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
