"""Rule ollama: create the model in a running Ollama server and smoke-test one chat; JSON result."""

import argparse
import json
import logging
import sys
from pathlib import Path

from blogtune.logs import setup_logging, snakemake_log


def main(
    gguf,
    model_dir,
    result_json,
    host,
    model_name,
    smoke_prompt=None,
    system=None,
    parameters=None,
    template=None,
    max_tokens=256,
    log_file=None,
):
    setup_logging(log_file)
    log = logging.getLogger("ollama_create")
    from blogtune.export.ollama import OllamaUnavailable, SmokeTestError, deploy
    from blogtune.io_utils import atomic_write_json
    from blogtune.model.chat_format import load_family

    family = load_family(Path(model_dir), template_override=template)
    try:
        result = deploy(
            Path(gguf),
            model_name,
            family,
            host=host,
            system=system,
            parameters=dict(parameters or {}),
            template=template,
            smoke_prompt=smoke_prompt,
            max_tokens=max_tokens,
        )
    except OllamaUnavailable as exc:
        log.error("%s", exc)
        sys.exit(2)
    data = result.as_dict()
    log.info("result: %s", json.dumps(data, ensure_ascii=False))
    if result.smoke is not None and not result.smoke.passed:
        # The job fails (Snakemake then drops the output); the log keeps the reply and the reasons.
        raise SmokeTestError(f"{model_name}: " + "; ".join(result.smoke.problems))
    atomic_write_json(result_json, data)


if "snakemake" in globals():
    smk = snakemake  # noqa: F821
    main(
        smk.input.gguf,
        smk.input.model,
        smk.output.result,
        smk.params.host,
        smk.params.model_name,
        smk.params.smoke_prompt,
        smk.params.system,
        smk.params.parameters,
        smk.params.template,
        log_file=snakemake_log(smk),
    )
elif __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("gguf")
    ap.add_argument("model_dir", help="HF folder whose tokenizer defines the chat template")
    ap.add_argument("result_json")
    ap.add_argument("--host", default="http://127.0.0.1:11434")
    ap.add_argument("--name", required=True, help="Ollama model name")
    ap.add_argument("--smoke-prompt", default="Hello! Who are you?")
    ap.add_argument("--system", default=None)
    ap.add_argument("--parameters", default="{}", help="JSON object")
    ap.add_argument("--template", default=None)
    ap.add_argument("--max-tokens", type=int, default=256)
    a = ap.parse_args()
    main(
        a.gguf,
        a.model_dir,
        a.result_json,
        a.host,
        a.name,
        a.smoke_prompt,
        a.system,
        json.loads(a.parameters),
        a.template,
        a.max_tokens,
    )
