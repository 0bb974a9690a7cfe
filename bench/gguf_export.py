"""Benchmark: GGUF export speed and peak memory, ours vs mlx-lm's own exporter, same model, same run.

A random-weight llama-architecture model (float16 safetensors, 4 shards, >1 GB) is generated once;
then each exporter runs in its own child process, which reads its own peak resident memory (VmHWM) when done.
Not ru_maxrss from wait4: Linux carries the parent's high-water mark across fork+exec, so a child
of this (model-generating) process would report the parent's peak instead of its own. mlx-lm's path is what `mlx_lm.fuse --export-gguf` does:
all weights loaded with mx.load, then mlx_lm.gguf.convert_to_gguf (fp16 only, llama only).

    python bench/gguf_export.py [--workdir /tmp/blogtune-bench] [--layers 16] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

DIMS = dict(
    hidden_size=2048,
    intermediate_size=5632,
    num_attention_heads=32,
    num_key_value_heads=4,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
)


def generate(model_dir: Path, layers: int) -> None:
    """Random float16 llama weights written shard by shard (never the whole model in memory)."""
    import numpy as np
    from safetensors.numpy import save_file

    from blogtune.testing import smollm2_tokenizer

    tok_dir = smollm2_tokenizer(model_dir.parent / "tokenizer")
    model_dir.mkdir(parents=True, exist_ok=True)
    vocab = 49152  # the real SmolLM2 tokenizer, so the exporters see a real vocabulary
    h, ff = DIMS["hidden_size"], DIMS["intermediate_size"]
    kv = h // DIMS["num_attention_heads"] * DIMS["num_key_value_heads"]
    rng = np.random.default_rng(0)

    def rand(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

    shapes = {"model.embed_tokens.weight": (vocab, h), "model.norm.weight": (h,)}
    for b in range(layers):
        p = f"model.layers.{b}."
        shapes |= {
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (h, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (ff, h),
            p + "mlp.up_proj.weight": (ff, h),
            p + "mlp.down_proj.weight": (h, ff),
        }
    names = list(shapes)
    n_shards = 4
    per = -(-len(names) // n_shards)
    weight_map = {}
    for i in range(n_shards):
        part = names[i * per : (i + 1) * per]
        fname = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        tensors = {
            n: (np.ones(shapes[n], np.float16) if len(shapes[n]) == 1 else rand(*shapes[n])) for n in part
        }
        save_file(tensors, model_dir / fname, metadata={"format": "pt"})
        weight_map |= {n: fname for n in part}
        del tensors
    (model_dir / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "num_hidden_layers": layers,
        "vocab_size": vocab,
        "tie_word_embeddings": True,
        "torch_dtype": "float16",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        **DIMS,
    }
    (model_dir / "config.json").write_text(json.dumps(config, indent=2))
    for f in tok_dir.iterdir():
        shutil.copy2(f, model_dir / f.name)


def run_ours(model_dir: Path, out: Path, outtype: str) -> None:
    from blogtune.export.gguf import export_gguf

    export_gguf(model_dir, out, outtype)


def run_mlx(model_dir: Path, out: Path) -> None:
    import mlx.core as mx
    from mlx_lm.gguf import convert_to_gguf

    config = json.loads((model_dir / "config.json").read_text())
    weights = {}
    for f in sorted(model_dir.glob("model-*.safetensors")):
        weights.update(mx.load(str(f)))
    convert_to_gguf(model_dir, weights, config, str(out))


def vm_hwm() -> int:
    """This process's peak resident memory in bytes (VmHWM is per address space, reset by exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure(args: list[str]) -> tuple[float, dict, int]:
    """(seconds, {"peak", "baseline"} bytes, exit status) of one child process."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, *args], cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    mem = json.loads(lines[-1]) if lines else {"peak": 0, "baseline": 0}
    if proc.returncode:
        print(proc.stderr[-2000:], file=sys.stderr)
    return seconds, mem, proc.returncode


def largest_tensor(model_dir: Path) -> tuple[str, int]:
    from blogtune.export.gguf.safetensors_io import index_model

    ref = max(index_model(model_dir).values(), key=lambda r: r.nbytes)
    return ref.name, ref.nbytes


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("*.safetensors"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/blogtune-bench"))
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--keep", action="store_true", help="keep the generated model and GGUFs")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        kind, model_dir, out, *rest = a.child
        if kind == "ours":
            import blogtune.export.gguf  # noqa: F401 - imports count as baseline, not as export memory
        else:
            import mlx.core  # noqa: F401
            import mlx_lm.gguf  # noqa: F401
        baseline = vm_hwm()
        if kind == "ours":
            run_ours(Path(model_dir), Path(out), rest[0])
        else:
            run_mlx(Path(model_dir), Path(out))
        print(json.dumps({"peak": vm_hwm(), "baseline": baseline}))
        return

    model_dir = a.workdir / "model"
    if not (model_dir / "config.json").is_file():
        print(f"generating a random {a.layers}-layer llama model in {model_dir} ...", flush=True)
        generate(model_dir, a.layers)
    size = dir_bytes(model_dir)
    big_name, big = largest_tensor(model_dir)
    print(
        f"model: {size / 1e9:.2f} GB float16 safetensors (4 shards); largest tensor {big_name} {big / 1e6:.0f} MB\n"
    )

    rows = []
    for label, child in [
        ("blogtune f16", ["ours", str(model_dir), str(a.workdir / "ours-f16.gguf"), "f16"]),
        ("blogtune q8_0", ["ours", str(model_dir), str(a.workdir / "ours-q8_0.gguf"), "q8_0"]),
        ("mlx_lm.gguf f16", ["mlx", str(model_dir), str(a.workdir / "mlx-f16.gguf")]),
    ]:
        seconds, mem, code = measure(["--child", *child])
        out = Path(child[2])
        out_size = out.stat().st_size if out.is_file() else 0
        rows.append((label, seconds, size / 1e6 / seconds, mem, out_size, code))
        print(f"  {label}: {seconds:.1f} s, peak RSS {mem['peak'] / 1e9:.2f} GB, exit {code}", flush=True)

    # "after imports": the process with the exporter's modules loaded, before it reads any weight.
    print(
        f"\n{'exporter':<17}{'seconds':>8}{'MB/s in':>8}{'peak RSS':>10}{'after imports':>14}"
        f"{'export part':>12}{'/model':>7}{'/largest':>9}{'GGUF':>9}"
    )
    for label, seconds, mbps, mem, out_size, code in rows:
        flag = "" if code == 0 else f"  (exit {code})"
        delta = mem["peak"] - mem["baseline"]
        print(
            f"{label:<17}{seconds:>8.1f}{mbps:>8.0f}{mem['peak'] / 1e6:>7.0f} MB{mem['baseline'] / 1e6:>11.0f} MB"
            f"{delta / 1e6:>9.0f} MB{mem['peak'] / size:>6.2f}x{delta / big:>8.2f}x{out_size / 1e9:>6.2f} GB{flag}"
        )
    ours, peer = rows[0], rows[2]
    if peer[5] == 0:
        print(
            f"\nblogtune f16 vs mlx_lm.gguf: {peer[1] / ours[1]:.2f}x the speed, "
            f"{ours[3]['peak'] / peer[3]['peak']:.2f}x the peak memory"
        )
    if not a.keep:
        for p in a.workdir.glob("*.gguf"):
            p.unlink()


if __name__ == "__main__":
    main()
