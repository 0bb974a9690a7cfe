"""convert: the MLX model computes what the source checkpoint computes.

transformers 5 keeps rope_theta inside `rope_parameters`; mlx-lm reads only a top-level key and
would silently use 10000. A tiny llama with SmolLM2's rope_theta (100000) catches that.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from blogtune.model.convert import ConvertPlan, convert_to_mlx, mlx_rope_keys, plan_conversion


def test_rope_keys_lifted_only_when_missing():
    assert mlx_rope_keys({"rope_theta": 1e4}) == {}
    assert mlx_rope_keys({"rope_parameters": {"rope_theta": 1e5, "rope_type": "default"}}) == {"rope_theta": 1e5}
    llama3 = {"rope_theta": 5e5, "rope_type": "llama3", "factor": 32.0}
    assert mlx_rope_keys({"rope_parameters": llama3}) == {
        "rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", "factor": 32.0}
    }


def test_auto_plan_keeps_float32_on_cpu_and_quantizes_on_gpu():
    cpu = plan_conversion("auto", 4, 64, "auto", "cpu")
    gpu = plan_conversion("auto", 4, 64, "auto", "gpu")
    assert (cpu.quantize, cpu.dtype) == (False, "float32")
    assert (gpu.quantize, gpu.bits, gpu.dtype) == (True, 4, None)
    with pytest.raises(ValueError, match="model.quantize"):
        plan_conversion("sometimes", 4, 64, "auto", "cpu")


def test_converted_model_matches_source_logits(tiny_model_factory, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    src = tiny_model_factory("llama", rope_theta=100000.0)
    assert "rope_theta" not in json.loads((src / "config.json").read_text()), "transformers 5 layout expected"
    out = convert_to_mlx(src, tmp_path / "mlx", ConvertPlan(False, 4, 64, "float32", "cpu"))
    assert json.loads((out / "config.json").read_text())["rope_theta"] == 100000.0

    import mlx.core as mx
    from mlx_lm import load

    ids = np.array([[1, 400, 2100, 77, 9000, 31, 5, 812, 3000, 44, 10, 11]])
    with torch.no_grad():
        ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)(torch.tensor(ids)).logits[0].numpy()
    model, _ = load(str(out))
    got = np.array(model(mx.array(ids))[0])
    assert np.abs(got - ref).max() < 1e-3
