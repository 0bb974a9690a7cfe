"""Rule ollama: create the model in a running Ollama server and smoke-test one chat; JSON result."""

import json
import logging
import sys
from pathlib import Path

from blogtune.logs import setup_logging, snakemake_log


def run(
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


def main(snakemake) -> None:
    p = snakemake.params
    run(snakemake.input.gguf, snakemake.input.model, snakemake.output.result, p.host, p.model_name,
        p.smoke_prompt, p.system, p.parameters, p.template, log_file=snakemake_log(snakemake))


if __name__ == "__main__":
    if "snakemake" not in globals():  # run by hand: the same job Snakemake would run, from config.yaml
        from blogtune.standalone import mock_snakemake

        snakemake = mock_snakemake("ollama")
    main(snakemake)  # noqa: F821
