# Knowledge samples from the train-split posts (Q&A, rewrites, teacher-free views), between split
# and format. Sharded: a batch of posts per job (stable hash of the post id), so a cluster executor
# fans it out; teacher answers are cached per post outside the outputs (results/data/teach/cache),
# so reruns after new posts or training settings ask nothing again for known posts.


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
    log:
        "logs/teach/shard{shard}.log",
    wildcard_constraints:
        shard=r"\d+",
    conda:
        "../envs/blogtune.yaml"
    threads: teach_threads()
    resources:
        mem_mb=teach_mem_mb(),
        runtime=teach_runtime(),
        gpu=1 if config["teach"]["teacher"]["kind"] == "local" else 0,
    params:
        shards=TEACH_SHARDS,
        settings=teach_settings(),
        teacher=teacher_settings(),
        cache_dir=data_path("teach/cache"),
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
