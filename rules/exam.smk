# The exam (blogtune.exam): closed-book items about the posts, base vs fine-tuned, and the
# shipped GGUF in llama.cpp. exam_items is model-independent; exam depends on the base model,
# the adapters and the items only (export settings never rerun it); exam_gguf checks the export.


rule exam_items:
    input:
        train=rules.split.output.train,
        valid=rules.split.output.valid,
        test=rules.split.output.test,
        heldout=rules.teach_merge.output.heldout,
    output:
        exam_items=data_path("exam/items.jsonl"),
    log:
        "logs/exam_items/exam_items.log",
    conda:
        "../envs/blogtune.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        seed=config["exam"]["seed"],
        max_items=config["exam"]["max_items"],
        max_per_article=config["exam"]["max_per_article"],
    script:
        "../scripts/exam_items.py"


rule exam:
    input:
        model=rules.convert.output.model,
        adapters=rules.train.output.adapters,
        exam_items=rules.exam_items.output.exam_items,
        train=rules.format.output.train,
    output:
        metrics=model_path("exam/exam_metrics.json"),
        rows=model_path("exam/exam_items.jsonl"),
    log:
        log_path("exam"),
    conda:
        "../envs/blogtune.yaml"
    threads: all_cores()
    resources:
        mem_mb=6000,
        runtime=60,
        gpu=0,
    params:
        max_tokens=config["exam"]["max_tokens"],
        answer_room=config["exam"]["answer_room"],
        generate_items=config["exam"]["generate_items"],
        heldout_items=config["exam"]["heldout_items"],
        batch_size=config["exam"]["batch_size"],
        seed=config["exam"]["seed"],
        max_reference_tokens=config["exam"]["max_reference_tokens"],
    script:
        "../scripts/exam.py"


rule exam_gguf:
    input:
        gguf=rules.export_gguf.output.gguf,
        modelfile=rules.modelfile.output.modelfile,
        fused=rules.fuse.output.model,
        rows=rules.exam.output.rows,
    output:
        metrics=model_path("exam/gguf_metrics.json"),
        rows=model_path("exam/gguf_answers.jsonl"),
    log:
        log_path("exam_gguf"),
    conda:
        "../envs/blogtune.yaml"
    threads: all_cores()
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        system=config["system_prompt"],
        parameters=config["modelfile"]["parameters"],
        template=config["modelfile"]["template"],
        max_tokens=config["exam"]["max_tokens"],
        greedy_items=config["exam"]["gguf_greedy_items"],
    script:
        "../scripts/exam_gguf.py"
