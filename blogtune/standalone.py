"""Run a rule's script by hand, with exactly the inputs Snakemake would give it.

`mock_snakemake("train")` parses the Snakefile with config.yaml through Snakemake's own API and
builds that rule's job: input, output, params, log, threads and resources, as `script:` passes
them. Every script ends with `main(mock_snakemake("<rule>"))`, so a standalone run can never
disagree with the workflow's defaults (the anchor is PyPSA-Eur's helper of the same name).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def mock_snakemake(
    rule: str,
    configfiles: list[str | Path] | None = None,
    snakefile: str | Path = REPO / "Snakefile",
    **wildcards: str,
):
    """The `snakemake` object a `script:` job of `rule` gets, for the workflow run from the current folder.

    configfiles: extra config files applied over the Snakefile's `configfile:` (as --configfile).
    Output and log folders are created; nothing runs.
    """
    # Loading the workflow runs its preflight, which imports mlx: bind the fast CPU BLAS first, as a
    # Snakemake job's script does before its first mlx import (later binding has no effect).
    from blogtune.blas import setup_mlx_cpu

    setup_mlx_cpu()
    from snakemake.api import SnakemakeApi
    from snakemake.dag import DAG
    from snakemake.jobs import Job
    from snakemake.script import Snakemake
    from snakemake.settings.types import (
        ConfigSettings,
        DAGSettings,
        OutputSettings,
        ResourceSettings,
        StorageSettings,
        WorkflowSettings,
    )

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        workflow_api = api.workflow(
            resource_settings=ResourceSettings(cores=cores),
            config_settings=ConfigSettings(configfiles=[Path(f) for f in configfiles or []]),
            storage_settings=StorageSettings(),
            workflow_settings=WorkflowSettings(),
            snakefile=Path(snakefile),
            workdir=Path.cwd(),
        )
        workflow = workflow_api._workflow  # the parsed Snakefile; the public API stops at the DAG
        job_rule = workflow.get_rule(rule)
        workflow.dag_settings = DAGSettings()  # what `workflow_api.dag()` would set
        dag = DAG(workflow, rules=[job_rule])
        job = Job(job_rule, dag, wildcards)
        absolute = [[os.path.abspath(p) for p in files] for files in (job.input, job.output, job.log)]
        for files, paths in zip((job.input, job.output, job.log), absolute, strict=True):
            for i, path in enumerate(paths):
                files[i] = path
        smk = Snakemake(
            job.input,
            job.output,
            job.params,
            job.wildcards,
            job.threads,
            job.resources,
            job.log,
            workflow.config,
            job.rule.name,
            None,
        )
    for path in [*smk.log, *smk.output]:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    return smk
