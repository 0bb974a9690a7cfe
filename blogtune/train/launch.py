"""The train job: in this process, or as N mlx.distributed processes (ring backend over TCP).

`train.distributed.processes: N` starts N ranks on 127.0.0.1 that share the job's cores; a
hostfile in mlx.launch's format ([{"ssh": "mac1", "ips": ["10.0.0.1"]}, ...]) puts one rank per
entry, remote ones started over ssh in the same directory with the same Python, as mlx.launch
does. The ring's addresses go to each rank in MLX_HOSTFILE, its rank in MLX_RANK, which is what
`mx.distributed.init(backend="ring")` reads. Not mlx.launch itself: it exits 0 when a rank fails
and does not pass SIGTERM on. A stop (SIGINT/SIGTERM to the launcher) goes to the local ranks as
SIGUSR1; the ranks agree on it each step, so remote ranks stop at the same step.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from blogtune.logs import setup_logging

log = logging.getLogger(__name__)

DEFAULT_PORT = 32323  # mlx.launch's --starting-port
STOP_CODES = {128 + s for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}


@dataclass
class Rank:
    ssh: str | None  # None: this machine
    address: str  # ip:port this rank listens on in the ring


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ring(dist: dict) -> list[Rank]:
    """The ranks of `train.distributed`: local processes, or one per hostfile entry."""
    if not dist.get("hostfile"):
        n, port = int(dist.get("processes") or 1), dist.get("port")
        ports = [port + r for r in range(n)] if port else [free_port() for _ in range(n)]
        return [Rank(None, f"127.0.0.1:{p}") for p in ports]
    path = Path(dist["hostfile"])
    try:
        hosts = json.loads(path.read_text(encoding="utf-8"))
        port = int(dist.get("port") or DEFAULT_PORT)
        ranks = [
            Rank(None if h["ssh"] in ("localhost", "127.0.0.1") else h["ssh"], f"{h['ips'][0]}:{port + r}")
            for r, h in enumerate(hosts)
        ]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
        raise ValueError(
            f"train.distributed.hostfile {path}: expected a JSON list of "
            f'{{"ssh": host, "ips": [ip, ...]}} ({err})'
        ) from None
    if not ranks:
        raise ValueError(f"train.distributed.hostfile {path} lists no hosts")
    return ranks


def run_train(job: dict) -> int:
    """The rule's train job; exit code (128 + signal when interrupted, as `run_rank`)."""
    ranks = ring(job["settings"].get("distributed") or {})
    if len(ranks) == 1:
        return run_rank(job)
    setup_logging(job.get("log_file"))
    return launch(job, ranks)


def launch(job: dict, ranks: list[Rank]) -> int:
    """Start the ranks, pass a stop on, wait; a rank that fails takes the others down with it."""
    work = Path(tempfile.mkdtemp(prefix=".launch-", dir=Path(job["summary"]).parent))
    (work / "ring.json").write_text(json.dumps([[r.address] for r in ranks]), encoding="utf-8")
    (work / "job.json").write_text(json.dumps(job), encoding="utf-8")
    n_local = sum(r.ssh is None for r in ranks)
    threads = max(1, int(job.get("threads") or os.cpu_count() or 1) // max(n_local, 1))
    log.info("distributed: %d ranks (%d on this machine, %d BLAS thread(s) each): %s",
             len(ranks), n_local, threads, [r.address for r in ranks])
    procs: list[subprocess.Popen] = []
    got: list[int] = []

    def on_signal(signum, frame):  # noqa: ARG001
        got.append(signum)
        log.warning("signal %d: asking every rank to checkpoint and stop", signum)
        for r, p in zip(ranks, procs, strict=False):
            if p.poll() is None:
                p.send_signal(signal.SIGUSR1 if r.ssh is None else signal.SIGTERM)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for r, rank in enumerate(ranks):
            cmd = [sys.executable, "-m", "blogtune.train.launch", str(work / "job.json"), str(threads)]
            env = {"MLX_RANK": str(r), "MLX_HOSTFILE": str(work / "ring.json")}
            if rank.ssh is None:
                procs.append(subprocess.Popen(cmd, env={**os.environ, **env}))
            else:  # the same Python, directory and import path as here (as mlx.launch assumes)
                if os.environ.get("PYTHONPATH"):
                    env["PYTHONPATH"] = os.environ["PYTHONPATH"]
                remote = f"cd {shlex.quote(os.getcwd())} && exec env " + shlex.join(
                    [f"{k}={v}" for k, v in env.items()] + cmd
                )
                procs.append(subprocess.Popen(["ssh", rank.ssh, remote]))
        return wait(procs, got)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for s, h in old.items():
            signal.signal(s, h)
        for f in work.iterdir():
            f.unlink()
        work.rmdir()


def wait(procs: list[subprocess.Popen], got: list[int]) -> int:
    """Exit code of the job: 128 + the launcher's signal, else the first failure, else a rank's stop."""
    while True:
        codes = [p.poll() for p in procs]
        crashed = [c if c > 0 else 128 - c for c in codes if c not in (None, 0, *STOP_CODES)]
        if crashed and None in codes:  # the rest would wait in a collective forever
            log.error("a rank failed (exit %d): stopping the others", crashed[0])
            for p in procs:
                if p.poll() is None:
                    p.kill()
            return crashed[0]
        if None not in codes:
            stops = [c for c in codes if c in STOP_CODES]
            return 128 + got[0] if got else (crashed or stops or [0])[0]
        time.sleep(0.1)


def run_rank(job: dict, threads: int | None = None, group=None) -> int:
    """Train (one rank of) the job; rank 0 writes the outputs. 128 + signal when interrupted."""
    rank = group.rank() if group is not None else 0
    if rank == 0:
        setup_logging(job.get("log_file"), append=group is not None)
    else:
        setup_logging(None, logging.WARNING)
    from blogtune import blas

    threads = threads or job.get("threads")
    blas.setup_mlx_cpu(threads)  # before mlx is imported anywhere
    from blogtune.io_utils import atomic_write_json
    from blogtune.train.checkpoint import TrainingInterrupted
    from blogtune.train.loop import train
    from blogtune.train.settings import TrainSettings

    ts = TrainSettings.from_dict(job["settings"])
    if rank == 0:
        log.info("settings: %s", json.dumps(ts.to_dict()))
    try:
        result = train(
            job["model_dir"], Path(job["train_file"]).parent, job["out_dir"], ts,
            loss_csv=job["loss_csv"], resume_dir=job.get("resume_dir"), threads=threads, group=group,
        )
    except TrainingInterrupted as err:
        if rank == 0:
            log.warning("%s; rerun the same job to resume from %s", err, job.get("resume_dir"))
        return 128 + err.signum
    if rank == 0:
        info = blas.blas_report(measure=True)
        log.info("BLAS: %s", info)
        world = group.size() if group is not None else 1
        summary = {"settings": ts.to_dict(), **result.to_dict(), "blas": info, "processes": world}
        atomic_write_json(job["summary"], summary)
    return 0


def rank_main(argv: list[str]) -> int:
    """`python -m blogtune.train.launch JOB.json THREADS`: one rank, started by `launch`."""
    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    threads = int(argv[1])
    from blogtune import blas

    blas.setup_mlx_cpu(threads)
    import mlx.core as mx

    group = mx.distributed.init(backend="ring", strict=True)
    return run_rank(job, threads, group)


if __name__ == "__main__":
    sys.exit(rank_main(sys.argv[1:]))
