"""Where a LoRA training step spends its CPU time: the workflow's MLX training vs PyTorch + PEFT.

    .venv/bin/python bench/profile_train.py [--steps 8] [--warmup 2] [--frequency 199] [--top 12]
        [any bench/train_throughput.py setting: --batch-size, --rank, --num-layers, ...]

Runs one bench/train_throughput.py worker per framework (same model, data, LoRA settings and
batches) under Linux `perf record` (sampling every thread, kernel included), then sorts the
samples into what they are: GEMM (OpenBLAS / MKL / oneDNN kernels), MLX's JIT-compiled fused
kernels, the frameworks' other native ops, memory traffic (memcpy/memset, page clearing in the
kernel), the Python interpreter, and the rest. Printed per framework: CPU-seconds per 1,000 scored
tokens in each category, the share of all samples, how many of the 2 cores were busy, and the
top symbols. Model loading and warm-up are in the profile too; they are a few seconds of a
run of minutes (the wall times of the measured steps are printed beside it).

Needs `perf` (Debian: linux-perf) and permission to use it (root, or kernel.perf_event_paranoid <= 1).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput as tt  # noqa: E402

CATEGORIES = ("gemm", "mlx fused (JIT)", "framework ops", "memory", "python", "other")


def categorize(dso: str, sym: str) -> str:
    d, s = dso.lower(), sym.lower()
    if "openblas" in d or re.search(r"gemm|mkl_blas|brgemm|jit_avx|jit_uni|sgemv", s):
        return "gemm"
    # MLX's JIT kernels are shared objects named after the fused graph, e.g.
    # libCf4IBroadcastBDf4ISubtractACEf4OExpD_VV_f4f4_<hash>_strided_2.so
    if re.search(r"_(strided_\d+|contiguous)\.so$", d):
        return "mlx fused (JIT)"
    if re.search(r"memcpy|memset|memmove|clear_page|page_fault|_raw_spin|copy_user|zap_|alloc_pages", s):
        return "memory"
    if "libpython" in d or d.startswith("python"):
        return "python"
    if "libmlx" in d or "libtorch" in d or "libc10" in d or "libgomp" in d or "libomp" in d:
        return "framework ops"
    return "other"


def perf_samples(data: Path) -> list[tuple[float, str, str]]:
    """(percent, dso, symbol) rows of `perf report`, flat (self time)."""
    out = subprocess.run(
        ["perf", "report", "-i", str(data), "--stdio", "-q", "--no-children", "--sort", "dso,sym",
         "--percent-limit", "0.01"],
        capture_output=True, text=True, check=True,
    ).stdout
    rows = []
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[[.k]\]\s+(.*)$", line)
        if m:
            rows.append((float(m.group(1)), m.group(2), m.group(3).strip()))
    return rows


def thread_seconds(data: Path, freq: int) -> list[float]:
    """CPU-seconds per thread, busiest first (every sample is 1/freq s of one thread's CPU time)."""
    out = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "tid"], capture_output=True, text=True, check=True
    ).stdout
    counts: dict[str, int] = defaultdict(int)
    for line in out.split():
        counts[line] += 1
    return sorted((n / freq for n in counts.values()), reverse=True)


def profile(kind: str, cfg: dict, freq: int, workdir: Path) -> dict:
    data = workdir / f"perf-{kind}.data"
    prefix = ["perf", "record", "-F", str(freq), "-o", str(data), "-q", "--"]
    # oneDNN's JIT kernels have no symbols unless it writes a perf map.
    tic = time.perf_counter()
    run = tt.run_worker(kind, cfg, prefix=prefix, env_extra={"DNNL_JIT_PROFILE": "1"})
    run_wall = time.perf_counter() - tic
    steps = run["steps"][cfg["warmup"]:]
    tokens = sum(s[0] for s in steps)
    wall = sum(s[1] for s in steps)
    rows = perf_samples(data)
    threads_s = thread_seconds(data, freq)
    by_cat: dict[str, float] = defaultdict(float)
    for pct, dso, sym in rows:
        by_cat[categorize(dso, sym)] += pct
    run_tokens = sum(s[0] for s in run["steps"])
    return {
        "kind": kind,
        "tok_s": tokens / wall,
        "step_wall_s": statistics.median(s[1] for s in steps),
        "cpu_s": sum(threads_s),
        "run_tokens": run_tokens,
        "run_wall_s": run_wall,
        "threads_s": threads_s,
        "by_cat": dict(by_cat),
        "top": rows,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    tt.add_arguments(p)
    p.add_argument("--frequency", type=int, default=199, help="perf samples per second per thread")
    p.add_argument("--top", type=int, default=12, help="symbols listed per framework")
    p.set_defaults(steps=8, warmup=2)
    args = p.parse_args(argv)
    if not shutil.which("perf"):
        print("perf is not installed (Debian/Ubuntu: apt-get install linux-perf)", file=sys.stderr)
        return 2
    cfg = tt.worker_config(args)
    workdir = Path(tempfile.mkdtemp(prefix="blogtune-profile-"))
    cores = len(os.sched_getaffinity(0))
    results = [profile(kind, cfg, args.frequency, workdir) for kind in ("mlx", "torch")]

    print(f"\nCPU-seconds per 1,000 scored tokens (whole run incl. load/warm-up; {cores} cores)")
    print(f"{'category':<18}" + "".join(f"{r['kind']:>16}" for r in results))
    for cat in CATEGORIES:
        cells = []
        for r in results:
            share = r["by_cat"].get(cat, 0.0) / 100
            cells.append(f"{r['cpu_s'] * share / r['run_tokens'] * 1000:8.2f} ({share:4.0%})")
        print(f"{cat:<18}" + "".join(f"{c:>16}" for c in cells))
    print(f"{'total':<18}" + "".join(f"{r['cpu_s'] / r['run_tokens'] * 1000:>16.2f}" for r in results))
    print(f"{'measured tok/s':<18}" + "".join(f"{r['tok_s']:>16.1f}" for r in results))
    print(f"{'step wall (median)':<18}" + "".join(f"{r['step_wall_s']:>15.1f}s" for r in results))
    print(f"{'cores busy (run)':<18}" + "".join(f"{r['cpu_s'] / r['run_wall_s']:>16.2f}" for r in results))
    for r in results:
        busiest = ", ".join(f"{t:.0f}" for t in r["threads_s"][:4])
        print(f"{r['kind']}: {r['run_wall_s']:.0f} s wall; CPU-seconds of its busiest threads: {busiest}")
    for r in results:
        print(f"\ntop symbols, {r['kind']} (self time, % of all samples):")
        for pct, dso, sym in r["top"][: args.top]:
            print(f"  {pct:5.1f}%  {categorize(dso, sym):<16} {Path(dso).name[:28]:<28} {sym[:70]}")
    print(f"\nperf data kept in {workdir} (perf report -i {workdir}/perf-mlx.data)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
