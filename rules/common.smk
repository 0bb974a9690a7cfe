# Helpers shared by the rules: paths, post discovery, preflight checks.
# No rule logic here, only wiring computed once when the workflow is parsed.
import hashlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, workflow.basedir)
# Script jobs run in fresh interpreters: let them import the blogtune package too.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (workflow.basedir, os.environ.get("PYTHONPATH")) if p
)

from blogtune.preflight import PreflightError, run_preflight  # noqa: E402

try:
    PLAN = run_preflight(config, Path.cwd())
except PreflightError as err:
    raise WorkflowError(f"blogtune: {err}") from None

BLOG_DIR = PLAN.blog_dir
POSTS = PLAN.posts
MODEL = PLAN.base_model
MODEL_SLUG = MODEL.slug


def all_cores():
    """Threads for the heavy rules: every core given with --cores. Commands that run no job
    (`--report`, `--lint`) give none; then any number will do, Snakemake caps it anyway."""
    try:
        return workflow.cores
    except WorkflowError:
        return os.cpu_count() or 1


def data_path(name):
    """Model-independent outputs: shared by every base model."""
    return f"results/data/{name}"


def model_path(name):
    """Outputs that depend on the base model live side by side per model."""
    return f"results/{MODEL_SLUG}/{name}"


def log_path(stage):
    return f"logs/{stage}/{MODEL_SLUG}.log"


def hf_model_input():
    """What convert reads: the imported embedded model, a local folder, or nothing (hub id)."""
    if MODEL.kind == "embedded":
        return model_path("base_hf")
    if MODEL.kind == "local":
        return [ancient(str(p)) for p in PLAN.base_model_files]
    return []


def hf_model_source(wildcards, input):
    if MODEL.kind == "embedded":
        return input.source
    if MODEL.kind == "local":
        return str(MODEL.path)
    return MODEL.spec


def export_name():
    return config["export"]["name"] or f"blogtune-{MODEL_SLUG}"


def _digest(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_hash():
    """Hash of the settings that shape the fine-tuned model (not export/report settings)."""
    keys = ("blog", "chunk", "split", "base_model", "model", "system_prompt", "format", "train")
    return _digest({k: config.get(k) for k in keys})


def data_hash():
    """Cheap fingerprint of the selected posts (path, size, mtime)."""
    return _digest(PLAN.post_fingerprint)


def exam_heldout_input():
    """The teacher stage's held-out questions, when it has written them (the exam works without)."""
    heldout = data_path("teach/heldout.jsonl")
    return [heldout] if os.path.exists(heldout) else []
