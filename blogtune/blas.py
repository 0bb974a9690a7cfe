"""Make MLX fast on a Linux CPU: optimized BLAS, vectorized JIT kernels, no page-fault churn.

Call `setup_mlx_cpu()` BEFORE the first `import mlx.core` (scripts/train.py does). Measured on the
development machine (2-core AMD EPYC, mlx[cpu] 0.32.4), what each piece fixes:

- BLAS. The mlx-cpu wheel links netlib's reference BLAS (~5-7 GFLOP/s fp32). Loading OpenBLAS
  with RTLD_GLOBAL before mlx is imported makes libmlx's `cblas_sgemm` bind to it: 140-350
  GFLOP/s on the 512x576 @ 576x1536 matmul (fresh subprocesses, A/B). Loading it *after*
  `import mlx.core` has no effect (measured), hence `reexec_with_preload()` for that case.
- JIT flags. On CPU `mx.compile` fuses elementwise ops into C++ that MLX compiles with
  `g++ -O3` and no ISA flags, so `exp` & co. run as scalar out-of-line calls (~75 Melem/s).
  Newer MLX adds `-mavx2 -mfma -mf16c` itself; we add those (plus the inlining and no-errno flags
  GCC needs to vectorize MLX's exp) through a `g++` shim first on PATH: fused exp ~600 Melem/s.
  Compiled kernels are cached per flag set under a private TMPDIR so stale scalar builds from an
  unflagged run are never reused.
- Kernels. OpenBLAS picks its kernels from the CPU model at load time, and a library older than
  the CPU does not know it: Debian 12's 0.3.21 on a Sapphire Rapids Xeon falls back to its SSE3
  "Prescott" kernels, 56 instead of 168 GFLOP/s and training at 22 instead of ~130 tokens/s
  (measured). When OpenBLAS would run pre-AVX2 kernels on a CPU with AVX2/AVX-512, we name the
  right ones (OPENBLAS_CORETYPE, probed in a subprocess first; a value the user set is kept).
- malloc. MLX's CPU allocator is plain malloc/free. glibc returns big blocks to the kernel on
  free, so every step page-faults hundreds of MB back in (clear_page ~10% of a training profile).
  Keeping freed memory in the heap removes that (elementwise ops 550 -> 1500 Melem/s).

No-op on macOS (Accelerate + Metal) and when an MLX GPU backend (CUDA) is installed and usable.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

OPENBLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib64/libopenblasp.so.0",
    "/usr/lib/libopenblas.so.0",
    "/usr/local/lib/libopenblas.so.0",
)
APT_HINT = "sudo apt-get install libopenblas0-pthread   (Fedora: sudo dnf install openblas-threads)"
# Flags newer MLX passes itself on AVX2 builds, plus what GCC needs to inline/vectorize simd::exp.
JIT_ISA_FLAGS = ("-mavx2", "-mfma", "-mf16c")
JIT_OPT_FLAGS = ("--param", "max-inline-insns-auto=1000", "-fno-math-errno", "-fno-trapping-math")
# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -2, -4, -8
# OpenBLAS's x86 kernel sets (its core names, lower case) that use AVX2/FMA or AVX-512.
AVX2_CORES = frozenset({"haswell", "zen", "skylakex", "cooperlake", "sapphirerapids"})
AVX512_FLAGS = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"})  # SkylakeX's set

_state: dict = {"openblas": None, "handle": None, "jit_flags": None, "malloc": False, "threads": None, "core": None}


def is_linux() -> bool:
    return sys.platform.startswith("linux")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def mlx_has_gpu_backend() -> bool:
    """True when an MLX CUDA backend is installed and an NVIDIA device is visible (no mlx import)."""
    from importlib import metadata

    names = {(d.metadata.get("Name") or "").lower() for d in metadata.distributions()}
    has_cuda_pkg = any(n.startswith("mlx-cuda") or n == "mlx_cuda" for n in names)
    return has_cuda_pkg and (Path("/dev/nvidia0").exists() or Path("/dev/nvidiactl").exists())


def find_openblas() -> Path | None:
    """An OpenBLAS shared library exporting the standard cblas_* names, or None."""
    env = os.environ.get("BLOGTUNE_OPENBLAS")
    if env:
        return Path(env) if Path(env).is_file() else None
    for cand in OPENBLAS_CANDIDATES:
        if Path(cand).is_file():
            return Path(cand)
    for name in ("openblas", "openblasp"):
        found = ctypes.util.find_library(name)
        if found:
            return Path(found)
    return None


def setup_mlx_cpu(threads: int | None = None, jit_flags: bool = True, tune_malloc: bool = True) -> dict:
    """Prepare this process for MLX CPU training; call before the first `import mlx.core`.

    threads: BLAS threads (default: cores available to this process) unless the user set
    OPENBLAS_NUM_THREADS. Returns `blas_report()`. Safe to call more than once.
    """
    if not is_linux():
        return blas_report()
    if mlx_has_gpu_backend():
        log.info("MLX GPU backend present: leaving the CPU BLAS alone")
        return blas_report()
    if "mlx.core" in sys.modules and _state["openblas"] is None:
        log.warning(
            "mlx.core was imported before setup_mlx_cpu(): its BLAS is already bound; "
            "call blogtune.blas.reexec_with_preload() or set it up before importing mlx"
        )
    threads = threads or available_cores()
    if "OPENBLAS_NUM_THREADS" not in os.environ:
        os.environ["OPENBLAS_NUM_THREADS"] = str(threads)
    _state["threads"] = int(os.environ["OPENBLAS_NUM_THREADS"])
    if tune_malloc and not _state["malloc"]:
        _state["malloc"] = _tune_malloc()
    if jit_flags and _state["jit_flags"] is None:
        _state["jit_flags"] = _install_jit_shim()
    if _state["openblas"] is None:
        path = find_openblas()
        if path is None:
            log.warning(
                "no optimized BLAS found: MLX will use the reference BLAS bundled with mlx-cpu "
                "(~30x slower matmuls; training takes hours instead of minutes). Install it: %s",
                APT_HINT,
            )
        else:
            fix_openblas_kernels(path)
            try:
                _state["handle"] = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
                _state["openblas"] = str(path)
                _state["core"] = _corename(_state["handle"])
                log.info("BLAS: %s (%d threads, %s kernels)", path, _state["threads"], _state["core"] or "unknown")
            except OSError as err:
                log.warning("could not load %s (%s); install it: %s", path, err, APT_HINT)
    return blas_report()


def kernels_for(detected: str, cpu_flags: set[str]) -> str | None:
    """The OpenBLAS core to name instead of `detected`, or None to keep it: only when OpenBLAS
    chose pre-AVX2 kernels for a CPU that has AVX2+FMA (Haswell) or AVX-512 (SkylakeX)."""
    if detected.lower() in AVX2_CORES:
        return None
    if AVX512_FLAGS <= cpu_flags:
        return "SkylakeX"
    if {"avx2", "fma"} <= cpu_flags:
        return "Haswell"
    return None


def openblas_core(path: Path | str, coretype: str | None = None) -> str | None:
    """The kernel set OpenBLAS at `path` picks on this CPU (with OPENBLAS_CORETYPE=coretype),
    probed in a subprocess: the choice is made once, when the library loads."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "OPENBLAS_CORETYPE", "OPENBLAS_VERBOSE")}
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    code = (
        "import ctypes, sys; f = ctypes.CDLL(sys.argv[1]).openblas_get_corename; "
        "f.restype = ctypes.c_char_p; print(f().decode())"
    )
    try:
        out = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def fix_openblas_kernels(path: Path | str) -> str | None:
    """Set OPENBLAS_CORETYPE when OpenBLAS would run pre-AVX2 kernels on an AVX2/AVX-512 CPU
    (call before the library loads). Returns the core named, or None when nothing changed."""
    if os.environ.get("OPENBLAS_CORETYPE") or platform.machine() not in ("x86_64", "AMD64"):
        return None
    detected = openblas_core(path)
    want = kernels_for(detected or "", _cpu_flags()) if detected else None
    if want is None:
        return None
    got = openblas_core(path, want)
    if (got or "").lower() != want.lower():
        log.warning("OpenBLAS (%s) runs %s kernels on this CPU and does not accept %s: matmuls are slow", path, detected, want)
        return None
    os.environ["OPENBLAS_CORETYPE"] = want
    log.info("OpenBLAS does not know this CPU and chose %s kernels; using %s (OPENBLAS_CORETYPE)", detected, want)
    return want


def _corename(handle) -> str | None:
    fn = getattr(handle, "openblas_get_corename", None)
    if fn is None:
        return None
    fn.restype = ctypes.c_char_p
    return (fn() or b"").decode() or None


def set_blas_threads(n: int) -> None:
    """Change OpenBLAS's thread count at runtime."""
    handle = _state["handle"]
    if handle is None:
        return
    fn = getattr(handle, "openblas_set_num_threads", None)
    if fn is not None:
        fn(ctypes.c_int(max(1, int(n))))
        _state["threads"] = max(1, int(n))


def reexec_with_preload(path: Path | None = None) -> None:
    """Re-execute this process with LD_PRELOAD=OpenBLAS (for when mlx was imported too early).

    Returns without doing anything if no OpenBLAS is found or it is already preloaded.
    """
    path = path or find_openblas()
    if path is None or str(path) in os.environ.get("LD_PRELOAD", ""):
        return
    fix_openblas_kernels(path)  # the preloaded library picks its kernels at load, like the CDLL route
    os.environ["LD_PRELOAD"] = ":".join(p for p in (str(path), os.environ.get("LD_PRELOAD", "")) if p)
    log.info("re-executing with LD_PRELOAD=%s", os.environ["LD_PRELOAD"])
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.argv])


def loaded_blas() -> str:
    """Which BLAS library this process has mapped: 'openblas', 'reference', 'accelerate' or 'none'."""
    if sys.platform == "darwin":
        return "accelerate"
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "unknown"
    if "openblas" in maps:
        return "openblas"
    if "mkl_rt" in maps or "libmkl" in maps:
        return "mkl"
    if "libblas" in maps:
        return "reference"
    return "none"


def blas_report(measure: bool = False) -> dict:
    """What the MLX CPU backend runs on, for logs and summaries; `measure` adds a ~0.5 s GFLOP/s check."""
    report = {
        "platform": f"{platform.system()} {platform.machine()}",
        "blas": loaded_blas()
        if "mlx.core" in sys.modules
        else ("openblas" if _state["openblas"] else "unknown"),
        "blas_path": _state["openblas"],
        "blas_threads": _state["threads"],
        "blas_core": _state["core"],
        "jit_flags": " ".join(_state["jit_flags"]) if _state["jit_flags"] else None,
        "malloc_tuned": _state["malloc"],
        "cores": available_cores(),
    }
    if "mlx.core" in sys.modules:
        import mlx.core as mx

        report["mlx_device"] = str(mx.default_device())
    if measure:
        report["sgemm_gflops"] = round(measure_gflops(), 1)
    return report


def measure_gflops(m: int = 512, k: int = 576, n: int = 1536, seconds: float = 0.3) -> float:
    """fp32 matmul throughput of MLX's default device (the SmolLM2 MLP shape by default)."""
    import mlx.core as mx

    a, b = mx.random.normal((m, k)), mx.random.normal((k, n))
    mx.eval(a, b)
    mx.eval(a @ b)
    reps, start = 0, time.perf_counter()
    while True:
        mx.eval(a @ b)
        reps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and reps >= 2:
            return 2.0 * m * k * n * reps / elapsed / 1e9


# --------------------------------------------------------------------------- internals


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _install_jit_shim() -> tuple[str, ...] | None:
    """Put a `g++` wrapper that adds ISA/vectorization flags first on PATH, with its own JIT cache."""
    real = shutil.which("g++")
    if real is None or platform.machine() not in ("x86_64", "AMD64"):
        return None
    if not {"avx2", "fma", "f16c"} <= _cpu_flags():
        return None
    flags = JIT_ISA_FLAGS + JIT_OPT_FLAGS
    tag = hashlib.sha256((real + " ".join(flags)).encode()).hexdigest()[:10]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "blogtune" / f"mlx-jit-{tag}"
    bindir = cache / "bin"
    shim = bindir / "g++"
    script = f'#!/bin/sh\nexec "{real}" {" ".join(flags)} "$@"\n'
    try:
        bindir.mkdir(parents=True, exist_ok=True)
        if not shim.is_file() or shim.read_text() != script:
            tmp = bindir / f".g++.{os.getpid()}"
            tmp.write_text(script)
            tmp.chmod(0o755)
            os.replace(tmp, shim)
    except OSError as err:
        log.debug("no JIT flag shim (%s)", err)
        return None
    os.environ["PATH"] = f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"
    # MLX caches compiled kernels under $TMPDIR/mlx/<version>/cpu by kernel name, not flags.
    os.environ["TMPDIR"] = str(cache)
    return flags


def _tune_malloc() -> bool:
    """Keep freed blocks in the heap instead of unmapping them (must run before mlx starts threads)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_ARENA_MAX, 1)  # one arena: big blocks come from the (reusable) brk heap
    ok &= mallopt(_M_MMAP_MAX, 0)  # no per-allocation mmap, so free() does not unmap
    ok &= mallopt(_M_TRIM_THRESHOLD, -1)  # -1: never give the heap top back (it is refilled next step)
    ok &= mallopt(_M_TOP_PAD, 256 * 2**20)
    return bool(ok)


def use_fast_blas(threads: int | None = None) -> dict:
    """Alias of setup_mlx_cpu() (the name the fuse/evaluate scripts use)."""
    return setup_mlx_cpu(threads)
