# Knowledge samples from the train-split posts (Q&A, rewrites, teacher-free views), between split
# and format. Sharded: a batch of posts per job (stable hash of the post id), so a cluster executor
# fans it out; teacher answers are cached per post outside the outputs (results/data/teach/cache),
# so reruns after new posts or training settings ask nothing again for known posts.
import math

# Helpers of this stage (kept here, not in common.smk, while the layout is reshaped).
TEACH = config["teach"]
# Shards by the number of posts selected (known when the workflow is parsed); which shard a post
# goes to is a stable hash of its id, so old posts stay in their shard while the count holds.
TEACH_SHARDS = max(1, math.ceil(len(POSTS) * config["split"]["fractions"]["train"] / TEACH["posts_per_shard"]))


def teach_settings():
    return {k: TEACH[k] for k in ("questions_per_section", "rewrites", "max_section_chars", "heldout", "filter")}


def teacher_settings():
    """Only what decides the teacher's answers or how it is reached (the key stays in the env)."""
    t = dict(TEACH["teacher"])
    if t["kind"] == "none":
        return {"kind": "none"}
    return t


def teacher_model_input():
    """The in-process teacher's weights: `embedded` is the converted embedded model (mlx_base,
    4-bit on Metal), a folder is tracked as an input, an HF id is loaded by mlx-lm."""
    t = TEACH["teacher"]
    if t["kind"] != "local":
        return []
    spec = t["model"] or "embedded"
    if spec == "embedded":
        if MODEL.kind != "embedded":
            raise WorkflowError(
                "blogtune: teach.teacher.model: 'embedded' teaches with the converted embedded model, "
                "which exists only with base_model: embedded; give a folder or HF id instead"
            )
        return [model_path("mlx_base")]
    path = Path(os.path.expanduser(spec))
    return [ancient(str(path))] if path.exists() else []


def teach_threads():
    return all_cores() if TEACH["teacher"]["kind"] == "local" else 1


def teach_mem_mb():
    return 8000 if TEACH["teacher"]["kind"] == "local" else 2000


def teach_runtime():
    return 30 if TEACH["teacher"]["kind"] == "none" else 240


def teach_shard_files(name):
    return [data_path(f"teach/shards/{i}/{name}") for i in range(TEACH_SHARDS)]



rule teach:
    input:
        train=rules.split.output.train,
        teacher_model=teacher_model_input(),
    output:
        samples=data_path("teach/shards/{shard}/samples.jsonl"),
        heldout=data_path("teach/shards/{shard}/heldout.jsonl"),
        drops=data_path("teach/shards/{shard}/drops.tsv"),
        counts=data_path("teach/shards/{shard}/counts.tsv"),
        stats=data_path("teach/shards/{shard}/stats.json"),
    wildcard_constraints:
        shard=r"\d+",
    params:
        shards=TEACH_SHARDS,
        settings=teach_settings(),
        teacher=teacher_settings(),
        cache_dir=data_path("teach/cache"),
    log:
        "logs/teach/shard{shard}.log",
    threads: teach_threads()
    resources:
        mem_mb=teach_mem_mb(),
        runtime=teach_runtime(),
        gpu=1 if config["teach"]["teacher"]["kind"] == "local" else 0,
    conda:
        "../envs/blogtune.yaml"
    script:
        "../scripts/teach.py"


rule teach_merge:
    input:
        samples=teach_shard_files("samples.jsonl"),
        heldout=teach_shard_files("heldout.jsonl"),
        drops=teach_shard_files("drops.tsv"),
        counts=teach_shard_files("counts.tsv"),
        stats=teach_shard_files("stats.json"),
    output:
        samples=data_path("teach/samples.jsonl"),
        heldout=data_path("teach/heldout.jsonl"),
        drops=data_path("teach/drops.tsv"),
        counts=report(
            data_path("teach/counts.tsv"),
            caption="../report/teach.rst",
            category="3. Data",
            labels={"page": "knowledge samples per post"},
        ),
        stats=data_path("teach/stats.json"),
    log:
        "logs/teach/merge.log",
    conda:
        "../envs/blogtune.yaml"
    script:
        "../scripts/teach_merge.py"
