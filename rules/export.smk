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
    params:
        outtype=config["export"]["gguf_type"],
        name=export_name(),
    log:
        log_path("export_gguf"),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
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
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
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
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    conda:
        "../envs/blogtune.yaml"
    script:
        "../scripts/ollama_create.py"
