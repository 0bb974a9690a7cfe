# Fused model -> GGUF -> Ollama Modelfile (and, on request, the model inside Ollama).


# `ollama` talks to the Ollama server at ollama.host (default 127.0.0.1: the machine you run
# snakemake on), so under a cluster executor it runs there, not on a compute node.
localrules:
    ollama,


rule export_gguf:
    input:
        model=rules.fuse.output.model,
    output:
        gguf=model_path(f"gguf/{export_name()}.gguf"),
        # What the export decided (pre-tokenizer and the rule that chose it, tensor types).
        report=model_path("gguf/export.json"),
    log:
        log_path("export_gguf"),
    conda:
        "../envs/blogtune.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        outtype=config["export"]["gguf_type"],
        name=export_name(),
        pre_tokenizer=config["export"]["pre_tokenizer"],
    script:
        "../scripts/export_gguf.py"


rule modelfile:
    input:
        gguf=rules.export_gguf.output.gguf,
        model=rules.fuse.output.model,
    output:
        modelfile=model_path("gguf/Modelfile"),
    log:
        log_path("modelfile"),
    conda:
        "../envs/blogtune.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        system=config["system_prompt"],
        parameters=config["modelfile"]["parameters"],
        template=config["modelfile"]["template"],
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
    log:
        log_path("ollama"),
    conda:
        "../envs/blogtune.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    params:
        host=config["ollama"]["host"],
        model_name=export_name(),
        smoke_prompt=config["ollama"]["smoke_prompt"],
        system=config["system_prompt"],
        parameters=config["modelfile"]["parameters"],
        template=config["modelfile"]["template"],
    script:
        "../scripts/ollama_create.py"
