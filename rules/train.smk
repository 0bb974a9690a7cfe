# LoRA (or DoRA / full) fine-tuning with mlx-lm, then fusing the adapters into the model.


rule train:
    input:
        model=rules.convert.output.model,
        train=rules.format.output.train,
        valid=rules.format.output.valid,
    output:
        adapters=directory(model_path("train/adapters")),
        loss_csv=model_path("train/loss.csv"),
        summary=model_path("train/summary.json"),
    log:
        log_path("train"),
    conda:
        "../envs/blogtune.yaml"
    threads: all_cores()
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=0,
    params:
        settings=config["train"],
        # Resume state lives outside the outputs: Snakemake deletes a failed job's outputs.
        resume_dir=model_path("train/resume"),
    script:
        "../scripts/train.py"


rule fuse:
    input:
        model=rules.convert.output.model,
        adapters=rules.train.output.adapters,
    output:
        model=directory(model_path("fused")),
    log:
        log_path("fuse"),
    conda:
        "../envs/blogtune.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    script:
        "../scripts/fuse.py"
