# blogtune: a blog (folder of markdown posts) -> a local LLM that knows those posts.
#   snakemake --cores all fuse    fused fine-tuned model
#   snakemake --cores all         + evaluation, GGUF and Ollama Modelfile
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, "schemas/config.schema.yaml", set_default=True)


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/teach_common.smk"
include: "rules/data.smk"
include: "rules/teach.smk"
include: "rules/model.smk"
include: "rules/train.smk"
include: "rules/export.smk"
include: "rules/exam.smk"
include: "rules/evaluate.smk"


rule all:
    default_target: True
    input:
        rules.fuse.output.model,
        rules.export_gguf.output.gguf,
        rules.modelfile.output.modelfile,
        rules.evaluate.output.metrics,
        rules.exam.output.metrics,
        rules.exam_gguf.output.metrics,
        rules.report_assets.output,


rule gguf:
    input:
        rules.export_gguf.output.gguf,
