"""Shared fixtures: the real SmolLM2 tokenizer and tiny random-weight models built from it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from blogtune.testing import build_tiny_model, smollm2_tokenizer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def quick_scontrol_config(tmp_path_factory):
    """Every `snakemake` the tests start loads the SLURM executor plugin, which asks `scontrol show
    config` (10 s timeout) as it loads. With the SLURM client installed (.ci/run does, for
    tests/test_slurm.py) and no controller running, that waits ~9 s per call, most of a dry run's
    time. A running controller answers in milliseconds, so in the tests that one question gets 1 s
    (tests/test_slurm.py's controller still answers it); every other scontrol call is unchanged."""
    real = shutil.which("scontrol")
    if real is None:
        yield
        return
    shim = tmp_path_factory.mktemp("scontrol_shim")
    script = shim / "scontrol"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = show ] && [ "$2" = config ]; then exec timeout 1 {real} "$@"; fi\n'
        f'exec {real} "$@"\n'
    )
    script.chmod(0o755)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", f"{shim}{os.pathsep}{os.environ.get('PATH', '')}")
        yield


@pytest.fixture(scope="session")
def smollm2_tok_dir(tmp_path_factory) -> Path:
    return smollm2_tokenizer(tmp_path_factory.mktemp("smollm2_tokenizer"))


@pytest.fixture(scope="session")
def smollm2_tokenizer_obj(smollm2_tok_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_tok_dir)


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory, smollm2_tok_dir):
    """build(model_type="llama", **overrides) -> HF folder; cached per argument set."""
    cache: dict = {}

    def build(model_type: str = "llama", tokenizer_dir: Path | None = None, **overrides) -> Path:
        key = (model_type, str(tokenizer_dir), tuple(sorted(overrides.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"tiny_{model_type}")
            cache[key] = build_tiny_model(out / "model", tokenizer_dir or smollm2_tok_dir, model_type, **overrides)
        return cache[key]

    return build


@pytest.fixture(scope="session")
def tiny_llama(tiny_model_factory) -> Path:
    return tiny_model_factory("llama")


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """A real OpenAI-compatible llama.cpp server on an f16 GGUF blogtune wrote from the embedded model."""
    from blogtune.testing_servers import LlamaServer, build_f16_gguf

    work = tmp_path_factory.mktemp("llama_server")
    with LlamaServer(build_f16_gguf(work), log=work / "server.log") as server:
        yield server
