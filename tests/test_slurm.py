"""The workflow on a real single-node SLURM (cluster/slurm.sh) under `--executor slurm`.

Runs `gguf` on 10 sample posts with a tiny model twice, locally and through SLURM with the
repo's slurm profile (account and partition filled in as a user would), then checks that the
jobs really went through SLURM (sacct) and that both runs produced the same outputs. Skipped
only where cluster/slurm.sh says it cannot run on this OS.
"""

from __future__ import annotations

import subprocess
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import yaml

from blogtune.testing import REPO, run_snakemake, write_config
from tests.test_workflow import SAMPLE_POSTS, TINY_EVAL, TINY_TRAIN, copy_sample_posts

SLURM_SH = REPO / "cluster" / "slurm.sh"
GGUF_RULES = {"chunk", "split", "teach", "teach_merge", "convert", "format", "train", "fuse", "export_gguf"}
CLUSTER_CPUS = 2  # what each heavy job asks for: the test node's cores, and the local run's
SACCT_FIELDS = "JobID,Comment%28,State,ExitCode,Elapsed,AllocCPUS,ReqMem,MaxRSS,WorkDir%60"


def slurm_sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(SLURM_SH), *args], capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise RuntimeError(f"cluster/slurm.sh {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def cluster():
    """A running cluster: started here (and stopped afterwards) unless one is up already."""
    checked = slurm_sh("check", check=False)
    if checked.returncode == 3:
        pytest.skip(checked.stdout.strip())
    assert checked.returncode == 0, checked.stdout + checked.stderr
    was_up = slurm_sh("status", check=False).returncode == 0
    if not was_up:
        slurm_sh("start")
    yield
    if not was_up:
        slurm_sh("stop")


def slurm_profile(dst: Path) -> Path:
    """profiles/slurm with the placeholders filled in for the test cluster."""
    prof = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text(encoding="utf-8"))
    assert prof["default-resources"]["slurm_account"] == "REPLACE_ME"
    prof["default-resources"].update(slurm_account="blogtune", slurm_partition="debug")
    prof["set-threads"] = {rule: CLUSTER_CPUS for rule in prof["set-threads"]}
    for res in prof["set-resources"].values():
        res["mem_mb"] = 4000  # the machine is shared: reserve what a tiny model needs
    prof["slurm-init-seconds-before-status-checks"] = 2  # tiny jobs: poll early
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "config.yaml").write_text(yaml.safe_dump(prof), encoding="utf-8")
    return dst


def sacct_rows(workdir: Path, since: str) -> list[dict]:
    """This workdir's SLURM jobs (allocations, not steps) since `since`, as sacct lists them."""
    keys = [k.split("%")[0] for k in SACCT_FIELDS.split(",")]
    out = subprocess.run(
        ["sacct", "-X", "-P", "-n", "-S", since, "-o", ",".join(keys)], capture_output=True, text=True, check=True
    ).stdout
    rows = [dict(zip(keys, line.split("|"), strict=True)) for line in out.splitlines() if line]
    return [r for r in rows if Path(r["WorkDir"]).resolve() == workdir.resolve()]


def sacct_listing(workdir: Path, since: str) -> str:
    ids = [r["JobID"] for r in sacct_rows(workdir, since)]
    proc = subprocess.run(["sacct", "-X", "-j", ",".join(ids), "-o", SACCT_FIELDS], capture_output=True, text=True)
    return proc.stdout


def job_rule(row: dict) -> str:
    return row["Comment"].removeprefix("rule_").split("_wildcards")[0]


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory, tiny_model_factory):
    """`gguf` run locally and under SLURM on the same posts and model."""
    root = tmp_path_factory.mktemp("slurm")
    blog = root / "blog"
    copy_sample_posts(blog, SAMPLE_POSTS)
    model = tiny_model_factory("llama")
    overrides = {"blog": {"dir": str(blog)}, "base_model": str(model), "train": TINY_TRAIN, "evaluate": TINY_EVAL}
    local, cluster_dir = root / "local", root / "cluster"
    for work in (local, cluster_dir):
        write_config(work, overrides)
    profile = slurm_profile(root / "profile")
    run_snakemake(local, "gguf", cores=CLUSTER_CPUS)
    since = datetime.now().strftime("%Y-%m-%dT%H:%M:%S")
    proc = run_snakemake(cluster_dir, "--profile", str(profile), "gguf", cores=None, timeout=900)
    print(f"\n{sacct_listing(cluster_dir, since)}")
    (slug,) = [p.name for p in (local / "results").iterdir() if p.name != "data"]
    return {"local": local, "cluster": cluster_dir, "profile": profile, "since": since, "slug": slug, "log": proc.stderr}


def test_every_rule_ran_as_a_slurm_job(runs):
    rows = sacct_rows(runs["cluster"], runs["since"])
    assert {job_rule(r) for r in rows} == GGUF_RULES, rows
    assert all(r["State"] == "COMPLETED" for r in rows), rows
    by_rule = {job_rule(r): r for r in rows}
    assert by_rule["train"]["AllocCPUS"] == str(CLUSTER_CPUS)
    assert by_rule["split"]["AllocCPUS"] == "1"
    assert by_rule["train"]["ReqMem"] == "4000M" and by_rule["chunk"]["ReqMem"] == "2000M"


def test_data_stages_are_byte_identical(runs):
    for name in ("chunks.jsonl", "articles.tsv", "rejects.tsv", "split/train.jsonl", "split/valid.jsonl",
                 "split/test.jsonl", "split/stats.tsv"):
        a, b = (runs[k] / "results/data" / name for k in ("local", "cluster"))
        assert a.read_bytes() == b.read_bytes(), name
    for name in ("train.jsonl", "valid.jsonl", "test.jsonl"):
        a, b = (runs[k] / "results" / runs["slug"] / "data" / name for k in ("local", "cluster"))
        assert a.read_bytes() == b.read_bytes(), name


def adapter_tensors(work: Path, slug: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(work / "results" / slug / "train/adapters/adapters.safetensors"))


def test_adapters_match_within_float_tolerance(runs):
    a, b = (adapter_tensors(runs[k], runs["slug"]) for k in ("local", "cluster"))
    assert a.keys() == b.keys() and a
    worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    scale = max(float(np.max(np.abs(a[k]))) for k in a)
    print(f"\nadapters: {len(a)} tensors, max |local - cluster| = {worst:.3g} (max |w| = {scale:.3g})")
    assert worst <= 1e-5 * max(scale, 1.0)


def gguf_summary(path: Path) -> tuple[dict, dict]:
    import gguf

    reader = gguf.GGUFReader(path)
    fields = {name: f.contents() for name, f in reader.fields.items()}
    tensors = {t.name: (tuple(int(d) for d in t.shape), t.tensor_type.name) for t in reader.tensors}
    return fields, tensors


def test_gguf_metadata_is_equal(runs):
    paths = [next((runs[k] / "results" / runs["slug"] / "gguf").glob("*.gguf")) for k in ("local", "cluster")]
    (fa, ta), (fb, tb) = (gguf_summary(p) for p in paths)
    assert fa == fb
    assert ta == tb and ta


def test_job_killed_for_memory_names_rule_and_resource_and_rerun_resumes(runs):
    """fuse with a memory limit its process cannot live in: SLURM kills it; the rerun with the
    profile's resources runs fuse and export_gguf only, not the stages before them."""
    work, slug = runs["cluster"], runs["slug"]
    fused, gguf_dir = work / "results" / slug / "fused", work / "results" / slug / "gguf"
    before = {p.name: p.read_bytes() for p in gguf_dir.glob("*.gguf")}
    for path in (fused, gguf_dir):
        subprocess.run(["rm", "-rf", str(path)], check=True)
    since = datetime.now().strftime("%Y-%m-%dT%H:%M:%S")
    failed = run_snakemake(
        # Target first: --set-resources takes several values and would swallow it.
        work, "gguf", "--profile", str(runs["profile"]), "--retries", "0", "--set-resources", "fuse:mem_mb=60",
        cores=None, check=False, timeout=600,
    )
    out = failed.stdout + failed.stderr
    assert failed.returncode != 0
    assert "Error in rule fuse" in out
    rows = sacct_rows(work, since)
    assert [(job_rule(r), r["State"]) for r in rows] in ([("fuse", "OUT_OF_MEMORY")], [("fuse", "FAILED")]), rows
    # cgroup hosts: SLURM's state, in snakemake's error, says it; elsewhere the job's SLURM log
    # (its path is in the error) does.
    job_logs = "".join(p.read_text(errors="replace") for p in (work / ".snakemake/slurm_logs/rule_fuse").glob("*.log"))
    assert "OUT_OF_MEMORY" in out or "exceeded memory limit" in job_logs, out[-3000:]
    assert "slurm_logs/rule_fuse" in out
    assert not fused.exists()

    rerun = run_snakemake(work, "--profile", str(runs["profile"]), "gguf", cores=None, timeout=600)
    new = [job_rule(r) for r in sacct_rows(work, since)][1:]
    assert sorted(new) == ["export_gguf", "fuse"], rerun.stderr[-3000:]
    assert {p.name: p.read_bytes() for p in gguf_dir.glob("*.gguf")} == before
