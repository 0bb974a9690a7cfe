# Model-independent data stages: posts -> chunks -> article-grouped split.
# One job over all posts (not one per post): thousands of tiny jobs are scheduler-bound.


rule chunk:
    input:
        # The blog root (article ids are paths below it); ancient: its mtime never reruns chunk.
        blog_dir=ancient(str(BLOG_DIR)),
        posts=POSTS,
    output:
        chunks=data_path("chunks.jsonl"),
        articles=data_path("articles.tsv"),
        rejects=data_path("rejects.tsv"),
        boilerplate=data_path("boilerplate.tsv"),
    log:
        "logs/chunk/chunk.log",
    conda:
        "../envs/blogtune.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        max_chars=config["chunk"]["max_chars"],
        boilerplate_min_fraction=config["chunk"]["boilerplate_min_fraction"],
        boilerplate_min_posts=config["chunk"]["boilerplate_min_posts"],
        max_post_bytes=config["blog"]["max_post_bytes"],
        index_missing=PLAN.index_missing,
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
    log:
        "logs/split/split.log",
    conda:
        "../envs/blogtune.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        fractions=config["split"]["fractions"],
        salt=config["split"]["salt"],
    script:
        "../scripts/split.py"
