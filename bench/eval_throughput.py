"""Evaluation throughput: blogtune's held-out scoring vs `mlx_lm.lora --test` on the same data.

Both run as fresh processes with OpenBLAS on the same MLX model and test.jsonl (batch size 4,
same max_seq_length), end to end (load + tokenize + score), alternating runs (--runs, default 3);
the ratio of median wall times is the ratio of tokens/s. Prints both losses too (they differ by
design: mlx-lm also scores one padding target per sample and drops a remainder batch; blogtune
scores training's targets).

    python bench/eval_throughput.py results/smollm2-135m-instruct/mlx_base results/smollm2-135m-instruct/data
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BLOGTUNE = """
import json, sys, time
sys.path.insert(0, {repo!r})
from blogtune.blas import use_fast_blas; use_fast_blas()
from mlx_lm import load
from blogtune.evaluate import losses as ev
from blogtune.io_utils import read_jsonl
t0 = time.perf_counter()
model, tok = load({model!r})
rows = list(read_jsonl({data!r} + "/test.jsonl"))
losses = ev.sample_losses(model, tok, rows, "test", ev.EvalSettings(mask_prompt=True, max_seq_length={msl}, batch_size=4))
s = ev.summarize(losses)
print(json.dumps({{"loss": s.loss, "tokens": sum(x.seq_tokens for x in losses), "seconds": time.perf_counter() - t0}}))
"""


def run_blogtune(model: str, data: str, msl: int) -> dict:
    code = BLOGTUNE.format(repo=str(REPO), model=model, data=data, msl=msl)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["wall"] = time.perf_counter() - t0
    return res


def run_mlx_lm(model: str, data: str, msl: int) -> dict:
    # The same OpenBLAS as blogtune (MLX's Linux wheel alone ships a ~20x slower BLAS), so the
    # ratio measures the scoring code, not the BLAS.
    argv = ["mlx_lm.lora", "--model", model, "--data", data, "--test", "--adapter-path", "",
            "--test-batches", "-1", "--batch-size", "4", "--max-seq-length", str(msl), "--mask-prompt"]
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); from blogtune.blas import use_fast_blas; use_fast_blas(); "
            f"sys.argv = {argv!r}; from mlx_lm.lora import main; main()")
    cmd = [sys.executable, "-c", code]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    m = re.search(r"Test loss ([\d.]+)", out.stdout + out.stderr)
    return {"loss": float(m.group(1)) if m else None, "wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("data", help="folder with train/valid/test.jsonl (mlx-lm chat samples)")
    ap.add_argument("--max-seq-length", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3, help="runs per side, alternating (median, min-max)")
    a = ap.parse_args()
    walls: dict[str, list[float]] = {"blogtune": [], "mlx-lm": []}
    for r in range(a.runs):
        ours = run_blogtune(a.model, str(a.data), a.max_seq_length)
        peer = run_mlx_lm(a.model, str(a.data), a.max_seq_length)
        walls["blogtune"].append(ours["wall"])
        walls["mlx-lm"].append(peer["wall"])
        print(f"run {r + 1}/{a.runs}: blogtune {ours['wall']:.1f} s, mlx_lm.lora --test {peer['wall']:.1f} s", flush=True)
    tokens = ours["tokens"]
    med = {k: statistics.median(v) for k, v in walls.items()}
    print(f"tokens scored (rendered sample tokens): {tokens}")
    for key, name, loss in (("blogtune", "blogtune evaluation", ours["loss"]), ("mlx-lm", "mlx_lm.lora --test", peer["loss"])):
        w = walls[key]
        print(
            f"{name:<20}: {med[key]:.1f} s wall (min-max {min(w):.1f}-{max(w):.1f}), "
            f"{tokens / med[key]:.0f} tokens/s, loss {loss}"
        )
    print(f"ratio (blogtune / mlx-lm tokens/s, medians): {med['mlx-lm'] / med['blogtune']:.2f}x")


if __name__ == "__main__":
    main()
