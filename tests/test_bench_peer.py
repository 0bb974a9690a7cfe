"""The training bench's PyTorch peer updates its weights as blogtune's mlx Adam does."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[1] / "bench" / "train_throughput.py"


def _bench():
    spec = importlib.util.spec_from_file_location("train_throughput", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peer_adam_steps_as_mlx_adam():
    import mlx.core as mx
    import mlx.optimizers as optim
    import torch

    rng = np.random.default_rng(0)
    start = rng.normal(size=(4, 3)).astype(np.float32)
    grads = [rng.normal(size=(4, 3)).astype(np.float32) * 10.0**-k for k in range(5)]

    mlx_opt = optim.Adam(learning_rate=1e-2)  # as blogtune.train.loop builds it for optimizer: adam
    params = {"w": mx.array(start)}
    peer = torch.nn.Parameter(torch.tensor(start))
    torch_opt = _bench().MlxAdam([peer], lr=1e-2)
    for g in grads:
        params = mlx_opt.apply_gradients({"w": mx.array(g)}, params)
        peer.grad = torch.tensor(g)
        torch_opt.step()
        torch_opt.zero_grad()
        np.testing.assert_allclose(peer.detach().numpy(), np.array(params["w"]), rtol=1e-5, atol=1e-7)
    # torch's own Adam corrects its bias and lands elsewhere: the reason for MlxAdam.
    other = torch.nn.Parameter(torch.tensor(start))
    adam = torch.optim.Adam([other], lr=1e-2)
    for g in grads:
        other.grad = torch.tensor(g)
        adam.step()
    assert not np.allclose(other.detach().numpy(), np.array(params["w"]), atol=1e-4)
