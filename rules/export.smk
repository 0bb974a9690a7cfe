# Fused model -> GGUF -> Ollama Modelfile (and, on request, the model inside Ollama).


rule export_gguf:
    input:
        model=rules.fuse.output.model,
    output:
        gguf=model_path(f"gguf/{export_name()}.gguf"),
        # What the export decided (pre-tokenizer and the rule that chose it, tensor types).
        report=model_path("gguf/export.json"),
    params:
        outtype=config["export"]["gguf_type"],
        name=export_name(),
        pre_tokenizer=config["export"]["pre_tokenizer"],
    log:
        log_path("export_gguf"),
    resources:
        mem_mb=4000,
    conda:
        "../envs/blogtune.yaml"
    script:
        "../scripts/export_gguf.py"


rule modelfile:
    input:
        gguf=rules.export_gguf.output.gguf,
        model=rules.fuse.output.model,
    output:
        modelfile=model_path("gguf/Modelfile"),
    params:
        system=config["system_prompt"],
        parameters=config["modelfile"]["parameters"],
        template=config["modelfile"]["template"],
    log:
        log_path("modelfile"),
    conda:
        "../envs/blogtune.yaml"
    script:
        "../scripts/modelfile.py"


rule ollama:
    # Not part of `all`: needs a running Ollama server at ollama.host.
    input:
        gguf=rules.export_gguf.output.gguf,
        modelfile=rules.modelfile.output.modelfile,
        model=rules.fuse.output.model,
    output:
        result=model_path("ollama/create.json"),
    params:
        host=config["ollama"]["host"],
        model_name=export_name(),
        smoke_prompt=config["ollama"]["smoke_prompt"],
        system=config["system_prompt"],
        parameters=config["modelfile"]["parameters"],
        template=config["modelfile"]["template"],
    log:
        log_path("ollama"),
    conda:
        "../envs/blogtune.yaml"
    script:
        "../scripts/ollama_create.py"
