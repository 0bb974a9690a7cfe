# Model-independent data stages: posts -> chunks -> article-grouped split.
# One job over all posts (not one per post): thousands of tiny jobs are scheduler-bound.


rule chunk:
    input:
        posts=POSTS,
    output:
        chunks=data_path("chunks.jsonl"),
        articles=data_path("articles.tsv"),
        rejects=data_path("rejects.tsv"),
    params:
        blog_dir=str(BLOG_DIR),
        max_chars=config["chunk"]["max_chars"],
        boilerplate_min_fraction=config["chunk"]["boilerplate_min_fraction"],
        max_post_bytes=config["blog"]["max_post_bytes"],
        index_missing=PLAN.index_missing,
    log:
        "logs/chunk/chunk.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/blogtune.yaml"
    script:
        "../scripts/chunk.py"


rule split:
    input:
        chunks=rules.chunk.output.chunks,
    output:
        train=data_path("split/train.jsonl"),
        valid=data_path("split/valid.jsonl"),
        test=data_path("split/test.jsonl"),
        stats=data_path("split/stats.tsv"),
        duplicates=data_path("split/duplicates.tsv"),
    params:
        fractions=config["split"]["fractions"],
        salt=config["split"]["salt"],
    log:
        "logs/split/split.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        "../envs/blogtune.yaml"
    script:
        "../scripts/split.py"
