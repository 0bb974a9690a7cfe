# Base model -> MLX model, and split chunks -> training samples in the model's chat format.


rule import_base:
    # Only for the embedded model: its GGUF becomes a normal HF-format folder.
    input:
        gguf=ancient(str(MODEL.path)) if MODEL.kind == "embedded" else [],
    output:
        model=directory(model_path("base_hf")),
    log:
        log_path("import_base"),
    conda:
        "../envs/blogtune.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../scripts/import_base.py"


rule convert:
    input:
        source=hf_model_input(),
    output:
        model=directory(model_path("mlx_base")),
    log:
        log_path("convert"),
    conda:
        "../envs/blogtune.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        source=hf_model_source,
        quantize=config["model"]["quantize"],
        bits=config["model"]["bits"],
        group_size=config["model"]["group_size"],
        dtype=config["model"]["dtype"],
        trust_remote_code=config["trust_remote_code"],
        eos_token=config["model"]["eos_token"],
        bos_token=config["model"]["bos_token"],
    script:
        "../scripts/convert.py"


rule format:
    input:
        train=rules.split.output.train,
        valid=rules.split.output.valid,
        test=rules.split.output.test,
        model=rules.convert.output.model,
        knowledge=rules.teach_merge.output.samples,
    output:
        train=model_path("data/train.jsonl"),
        valid=model_path("data/valid.jsonl"),
        test=model_path("data/test.jsonl"),
        stats=model_path("data/format_stats.json"),
    log:
        log_path("format"),
    conda:
        "../envs/blogtune.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        style=config["format"]["style"],
        max_seq_length=(
            config["train"]["max_seq_length"]
            if config["format"]["cut_to_fit"]
            else None
        ),
        prompts=config["format"].get("prompts"),
        system_prompt=config["system_prompt"],
        mix=config["format"]["mix"],
    script:
        "../scripts/format.py"
