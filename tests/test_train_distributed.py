"""Data-parallel training: 2 mlx.distributed processes (ring backend on 127.0.0.1) against one,
resume of an interrupted 2-process run, and the launcher's errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blogtune.train.launch import free_port, ring
from tests.test_train import FAST, data_dir, mlx_tiny, read_csv  # noqa: F401 (fixtures)

# 16 samples in batches of 3: the last batch of each epoch has one sample, so one rank gets none.
# eos_weight 1: the plain mean, whose adapters two processes reproduce to 1e-5 (the weighted loss
# has its own check below).
SETTINGS = {**FAST, "iters": 12, "batch_size": 3, "grad_accumulation": 2, "steps_per_report": 1, "save_every": 4, "eos_weight": 1.0}


def job(model: Path, data: Path, out: Path, processes: int, **settings) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    return {
        "model_dir": str(model),
        "train_file": str(data / "train.jsonl"),
        "out_dir": str(out / "adapters"),
        "loss_csv": str(out / "loss.csv"),
        "summary": str(out / "summary.json"),
        "settings": {**SETTINGS, **settings, "distributed": {"processes": processes}},
        "resume_dir": str(out / "resume"),
        "threads": 2,
        "log_file": str(out / "train.log"),
    }


def in_subprocess(j: dict) -> subprocess.Popen:
    """The job as the rule runs it: its own process (signals, logging), via run_train."""
    code = "import json, sys; from blogtune.train.launch import run_train; sys.exit(run_train(json.loads(sys.argv[1])))"
    return subprocess.Popen([sys.executable, "-c", code, json.dumps(j)], stderr=subprocess.PIPE, text=True)


def losses(path: Path) -> dict[tuple[str, str], float]:
    return {(r["step"], r["split"]): float(r["loss"]) for r in read_csv(path)}


def assert_same_adapters(a_dir: Path, b_dir: Path, atol: float) -> None:
    import mlx.core as mx

    a = mx.load(str(a_dir / "adapters.safetensors"))
    b = mx.load(str(b_dir / "adapters.safetensors"))
    assert a.keys() == b.keys()
    worst = max(mx.abs(a[k] - b[k]).max().item() for k in a)
    assert worst <= atol, f"adapters differ by up to {worst}"


def one_and_two(model: Path, data: Path, root: Path, **settings) -> dict[int, Path]:
    out = {}
    for n in (1, 2):
        proc = in_subprocess(job(model, data, root / f"p{n}", n, **settings))
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-4000:]
        out[n] = root / f"p{n}"
    return out


@pytest.fixture(scope="module")
def runs(mlx_tiny, data_dir, tmp_path_factory):  # noqa: F811
    return one_and_two(mlx_tiny, data_dir, tmp_path_factory.mktemp("distributed"))


def test_two_processes_follow_the_one_process_loss_curve(runs):
    one, two = losses(runs[1] / "loss.csv"), losses(runs[2] / "loss.csv")
    assert one.keys() == two.keys() and len(one) > 12
    for key in one:  # the same sums in another order: float32 rounding only
        assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-5), key
    summary = json.loads((runs[2] / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["iters"] == 12
    log = (runs[2] / "train.log").read_text()
    assert "distributed: 2 ranks (2 on this machine, 1 BLAS thread(s) each)" in log
    assert "rank 1" not in log, "rank 0 alone writes the job's log"
    assert not (runs[2] / "resume").exists() and not list(runs[2].glob(".launch-*"))


def test_two_processes_give_the_one_process_adapters(runs):
    assert_same_adapters(runs[1] / "adapters", runs[2] / "adapters", atol=1e-5)


@pytest.mark.parametrize("loss_norm", ["batch", "tokens"])
def test_two_processes_weigh_the_end_of_turn_token_as_one_does(mlx_tiny, data_dir, tmp_path, loss_norm):  # noqa: F811
    # Ranks must divide by the whole batch's weight (or the average batch's), not their own:
    # else the curves part.
    weighted = one_and_two(mlx_tiny, data_dir, tmp_path, eos_weight=5.0, loss_norm=loss_norm)
    one, two = losses(weighted[1] / "loss.csv"), losses(weighted[2] / "loss.csv")
    assert one.keys() == two.keys() and len(one) > 12
    for key in one:
        assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-5), key


def test_interrupted_two_process_run_resumes(runs, mlx_tiny, data_dir, tmp_path):  # noqa: F811
    j = job(mlx_tiny, data_dir, tmp_path, 2)
    proc = in_subprocess(j)
    log = tmp_path / "train.log"
    deadline = time.monotonic() + 300
    while not (log.is_file() and "step 3/12 " in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-4000:]
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)  # to the launcher only: it passes the stop on to both ranks
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGINT, err[-4000:]
    state = json.loads((tmp_path / "resume/checkpoint/state.json").read_text())
    assert 3 <= state["step"] < 12
    assert not (tmp_path / "adapters").exists()

    proc = in_subprocess(j)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    assert f"resuming from step {state['step']}/12" in log.read_text()
    assert_same_adapters(runs[2] / "adapters", tmp_path / "adapters", atol=1e-6)
    assert losses(tmp_path / "loss.csv") == pytest.approx(losses(runs[2] / "loss.csv"), abs=1e-6)


def test_hostfile_errors_name_the_key(tmp_path):
    bad = tmp_path / "hosts.json"
    bad.write_text('[{"ssh": "mac1"}]')
    with pytest.raises(ValueError, match=r"train.distributed.hostfile .*hosts.json"):
        ring({"hostfile": str(bad)})
    good = tmp_path / "good.json"
    good.write_text('[{"ssh": "localhost", "ips": ["10.0.0.1"]}, {"ssh": "mac2", "ips": ["10.0.0.2"]}]')
    ranks = ring({"hostfile": str(good), "port": 5000})
    assert [(r.ssh, r.address) for r in ranks] == [(None, "10.0.0.1:5000"), ("mac2", "10.0.0.2:5001")]


def test_an_unreachable_host_fails_the_job_instead_of_hanging(mlx_tiny, data_dir, tmp_path):  # noqa: F811
    # Rank 0 starts here and waits for the ring; rank 1's ssh fails: the launcher must end rank 0.
    hosts = tmp_path / "hosts.json"
    hosts.write_text('[{"ssh": "localhost", "ips": ["127.0.0.1"]}, {"ssh": "no-such-host.invalid", "ips": ["127.0.0.1"]}]')
    j = job(mlx_tiny, data_dir, tmp_path / "out", 1)
    j["settings"]["distributed"] = {"hostfile": str(hosts), "port": free_port()}
    proc = in_subprocess(j)
    try:  # a deadline for the hang this test is about, not a speed budget
        _, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the launcher hung waiting for a rank that never started")
    assert proc.returncode == 255, err[-4000:]  # ssh's code for "could not connect"
    assert not (tmp_path / "out" / "adapters").exists() and not list((tmp_path / "out").glob(".launch-*"))
