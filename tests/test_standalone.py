"""blogtune.standalone: a stage's script run by hand gets the job Snakemake would give it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from blogtune.blas import find_openblas, is_linux
from blogtune.testing import REPO, write_config


def test_a_job_run_by_hand_binds_the_fast_blas_before_the_workflow_imports_mlx(tmp_path):
    """Loading the workflow (its preflight imports mlx) must not bind mlx to the reference BLAS."""
    if not is_linux() or find_openblas() is None:
        pytest.skip("only Linux with OpenBLAS rebinds MLX's BLAS")
    write_config(tmp_path, {"blog": {"dir": str(REPO / "sample_blog")}})
    # what scripts/exam_gguf.py does by hand: the job from config.yaml, then its BLAS setup
    code = ("from blogtune.standalone import mock_snakemake; mock_snakemake('exam_gguf'); "
            "import sys; from blogtune.blas import loaded_blas, use_fast_blas; use_fast_blas(); "
            "print('mlx.core' in sys.modules, loaded_blas())")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert "imported before setup_mlx_cpu" not in proc.stderr, proc.stderr
    assert proc.stdout.split() == ["True", "openblas"], proc.stdout
