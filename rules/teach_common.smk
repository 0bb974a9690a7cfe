# Helpers of the teach stage (rules/teach.smk): settings passed as params, shards, resources.
import math

from blogtune.teach.views import VIEWS_VERSION

TEACH = config["teach"]
# Shards by the number of posts selected (known when the workflow is parsed); which shard a post
# goes to is a stable hash of its id, so old posts stay in their shard while the count holds.
TEACH_SHARDS = max(
    1,
    math.ceil(
        len(POSTS) * config["split"]["fractions"]["train"] / TEACH["posts_per_shard"]
    ),
)


def teach_settings():
    return {
        k: TEACH[k]
        for k in (
            "questions_per_section",
            "rewrites",
            "max_section_chars",
            "heldout",
            "filter",
        )
    } | {"views_version": VIEWS_VERSION}


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
